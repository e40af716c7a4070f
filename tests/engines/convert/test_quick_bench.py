"""convert's quick benchmark: round sizing, timing side by side, shapes capped by the model, the table."""

from __future__ import annotations

import time

from millibatch.engines.base import EngineInputs
from millibatch.engines.convert import quick_bench


def test_rounds_fit_the_budget_within_bounds() -> None:
    assert quick_bench.rounds_for(0.5, 5.0) == 10
    assert quick_bench.rounds_for(4.0, 5.0) == 3, "at least three rounds, however slow"
    assert quick_bench.rounds_for(0.0, 5.0) == 200, "at most 200, however fast"


def test_times_every_candidate_per_shape_and_caps_tokens_at_max_length() -> None:
    seen: list[tuple[str, tuple[int, ...]]] = []

    def candidate(name: str, seconds_per_row: float):  # type: ignore[no-untyped-def]
        def call(batch: EngineInputs) -> None:
            seen.append((name, batch.input_ids.shape))
            time.sleep(seconds_per_row * batch.input_ids.shape[0])
        return call

    result = quick_bench.run(
        {"fp32": candidate("fp32", 0.002), "int8": candidate("int8", 0.0005)},
        max_length=64, threads=1, seconds_per_shape=0.1,
    )
    # 1x128 and 32x128 become 1x64 and 32x64: a model cannot take more tokens than its positions.
    assert list(result["median_ms"]) == ["1x16", "1x64", "32x64"]
    assert {shape for _, shape in seen} == {(1, 16), (1, 64), (32, 64)}
    assert all(r >= 3 for r in result["rounds"].values())
    for medians in result["median_ms"].values():
        assert medians["int8"] < medians["fp32"]
    assert result["threads"] == 1 and result["device"] == "cpu" and "cores" in result["machine"]
    # Interleaved: the candidates alternate call by call rather than running in blocks.
    names = [name for name, _ in seen]
    assert names[:6] == ["fp32", "int8"] * 3


def test_table_shows_medians_and_speed_against_fp32() -> None:
    result = {"when": "2026-11-22 12:00 UTC", "machine": "some CPU, 2 usable cores", "device": "cpu", "threads": 1,
              "rounds": {"1x16": 3}, "median_ms": {"1x16": {"pytorch": 12.0, "fp32": 6.0, "int8": 2.5}}}
    text = quick_bench.table(result)
    assert "2026-11-22 12:00 UTC" in text and "some CPU" in text
    assert "| int8 | 2.50 (2.40×) |" in text
    assert "| pytorch | 12.00 (0.50×) |" in text
