"""The cost model recovers a known cost function and tracks a change online."""

from __future__ import annotations

import pytest

from millibatch.batching.cost_model import UNBOUNDED_ROWS, CostModel, Observation


def truth(rows: int, length: int) -> float:
    return 0.002 + 0.0001 * rows + 3e-6 * rows * length + 1e-8 * rows * length * length


def test_profile_fit_recovers_the_cost_function() -> None:
    model = CostModel()
    model.fit_profile([Observation(r, n, truth(r, n)) for r in (1, 4, 16, 32) for n in (8, 32, 128, 256)])
    for rows, length in ((1, 16), (8, 64), (32, 256), (3, 200)):
        assert model.predict(rows, length) == pytest.approx(truth(rows, length), rel=0.02)
    assert set(model.coefficients) == {"overhead", "per_row", "per_token", "per_token_squared"}
    assert all(v >= 0 for v in model.coefficients.values())


def test_online_observations_refit_towards_the_current_machine() -> None:
    model = CostModel(refit_every=8)
    model.fit_profile([Observation(r, n, truth(r, n)) for r in (1, 8, 32) for n in (16, 128)])
    for _ in range(64):  # the machine got twice as slow
        for rows, length in ((1, 16), (8, 128), (32, 128), (4, 64)):
            model.observe(rows, length, 2 * truth(rows, length))
    assert model.predict(16, 100) == pytest.approx(2 * truth(16, 100), rel=0.25)


def test_negative_coefficients_are_clamped() -> None:
    model = CostModel()
    model.fit_profile([Observation(r, 16, 0.001) for r in (1, 2, 4, 8, 16)])
    assert all(v >= 0 for v in model.coefficients.values())
    assert model.predict(4, 16) == pytest.approx(0.001, rel=0.05)


def test_efficient_rows_amortise_the_per_call_overhead() -> None:
    model = CostModel((0.002, 0.0, 1e-4, 0.0))  # 2 ms per call, 0.1 ms per token
    assert model.efficient_rows(16, 0.8) == 5  # 2 ms overhead <= 20% of 5 x 1.6 ms
    assert model.efficient_rows(256, 0.8) == 1  # long rows amortise the overhead alone
    rows = model.efficient_rows(16, 0.8)
    assert model.predict(rows, 16) * 0.8 <= rows * (model.predict(1, 16) - 0.002) + 1e-12


def test_rows_that_cost_nothing_are_always_worth_adding() -> None:
    # The H100 run (2026-11-27): fp16 batches took ~1.9 ms whatever their rows, the fit put everything
    # in the overhead, and efficient_rows said 1, so every batch ran one row at a sixth of the throughput.
    model = CostModel()
    model.fit_profile([Observation(r, n, 0.0019) for r in (1, 8, 32, 64) for n in (16, 128)])
    assert model.coefficients["per_row"] < 1e-12 and model.coefficients["per_token"] < 1e-12
    assert model.efficient_rows(16, 0.9) == model.efficient_rows(128, 0.8) == UNBOUNDED_ROWS


def test_what_follows_from_one_fit_is_forgotten_at_the_next() -> None:
    model = CostModel(refit_every=4)
    model.fit_profile([Observation(r, n, truth(r, n)) for r in (1, 8, 32) for n in (16, 128)])
    cache = model.per_fit()
    cache[64] = model.predict(8, 64)
    for _ in range(3):  # not yet a refit
        model.observe(8, 64, 3 * truth(8, 64))
    assert cache == {64: model.predict(8, 64)}
    for rows, length in ((1, 16), (8, 128), (32, 128), (4, 64)) * 8:  # the machine got three times slower
        model.observe(rows, length, 3 * truth(rows, length))
    assert cache == {}
    assert model.predict(8, 64) == pytest.approx(3 * truth(8, 64), rel=0.3)
