"""bench.overload_sim: the real batcher against a modelled engine, in simulated time."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from bench.overload_sim import EngineModel, HostStalls, apply, main, run_variant
from bench.virtual_loop import VirtualTimeLoop
from millibatch.batching import admission

#: (tokens, characters) of the simulated calls' texts: short sentences.
TEXTS = [(12, 50), (16, 70), (20, 90), (9, 35)]


def test_the_virtual_loop_jumps_over_sleeps_and_runs_timers_in_order() -> None:
    loop = VirtualTimeLoop()
    fired: list[tuple[str, float]] = []

    async def scenario() -> None:
        loop.call_later(2.0, lambda: fired.append(("late", loop.time())))
        loop.call_later(0.5, lambda: fired.append(("early", loop.time())))
        await asyncio.sleep(3600)

    try:
        started = time.perf_counter()
        loop.run_until_complete(scenario())
        assert time.perf_counter() - started < 1.0
        assert loop.time() == pytest.approx(3600)
    finally:
        loop.close()
    assert [name for name, _ in fired] == ["early", "late"]
    assert [at for _, at in fired] == pytest.approx([0.5, 2.0])


def test_host_stalls_hold_back_work_and_arrivals() -> None:
    stalls = HostStalls(rate=0.0, mean=0.01, rng=random.Random(0))
    assert stalls.resume(1.0) == 1.0 and stalls.finish(1.0, 0.2) == pytest.approx(1.2)
    stalls = HostStalls(rate=50.0, mean=0.01, rng=random.Random(3))
    stalls._extend(10.0)
    (start, end), (next_start, next_end) = zip(stalls._starts[:2], stalls._ends[:2], strict=True)
    assert stalls.resume((start + end) / 2) == end  # a call arriving in a stall is handled at its end
    assert stalls.resume(start - 1e-6) == start - 1e-6
    # Work begun before a stall is finished that much later; work spanning two stalls, both later.
    assert stalls.finish(start - 0.001, 0.002) == pytest.approx(end + 0.001)
    span = next_start - end
    assert stalls.finish(start - 0.001, 0.002 + span) == pytest.approx(next_end + 0.001)


def test_variants_set_engine_fields_and_admission_constants() -> None:
    model, constants = apply("noise=0,instances=2,SLACK_DECREASE=1", EngineModel())
    assert (model.noise, model.instances) == (0.0, 2)
    assert constants == {"SLACK_DECREASE": 1.0}
    with pytest.raises(SystemExit, match="unknown variant key"):
        apply("nonsense=1", EngineModel())


def small_args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"deadline_ms": 100.0, "duration": 2.0, "start_rate": 60.0, "step": 1.5,
                                 "multiples": [1.0, 3.0]}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_one_seed_gives_the_same_run_and_overload_keeps_goodput_without_late_answers() -> None:
    first = run_variant("", EngineModel(), TEXTS, small_args(), seed=4)
    again = run_variant("", EngineModel(), TEXTS, small_args(), seed=4)
    assert first == again
    assert first["peak"] > 60
    for phase in first["overload"]:
        assert phase["p99_ok_ms"] <= 100.0  # an OK comes before its deadline, or not at all
        assert phase["goodput_rps"] > 0.5 * first["peak"]
    assert first["overload"][-1]["refused"] > 0


def test_a_variant_changes_admission_for_its_run_only() -> None:
    before = admission.SLACK_DECREASE
    fixed = run_variant("SLACK_DECREASE=1,SLACK_INCREASE=0", EngineModel(), TEXTS, small_args(), seed=4)
    assert before == admission.SLACK_DECREASE
    assert all(phase["slack_mean"] == 1.0 for phase in fixed["overload"])
    adaptive = run_variant("", EngineModel(), TEXTS, small_args(), seed=4)
    assert min(phase["slack_mean"] for phase in adaptive["overload"]) < 1.0


@pytest.mark.timeout(300)
def test_the_command_writes_its_table(tiny_embed_dir: Path, stsb_path: Path, tmp_path: Path) -> None:
    main(["--seeds", "1", "--duration", "1", "--start-rate", "100", "--step", "2", "--multiples", "1,2",
          "--model-dir", str(tiny_embed_dir), "--stsb", str(stsb_path), "--variant", "calm=noise=0",
          "--out", str(tmp_path)])
    record = json.loads((tmp_path / "results.json").read_text())
    assert set(record["runs"]) == {"default", "calm"}
    table = (tmp_path / "results.md").read_text()
    assert "| default | 1 |" in table and "| calm | 1 |" in table and "Medians over the seeds" in table
    assert "Goodput in calls/s" in table


def test_a_concurrent_call_limit_refuses_before_admission() -> None:
    free = run_variant("", EngineModel(), TEXTS, small_args(), seed=4)
    limited = run_variant("call_limit=2,limit_refusal_cpu=0.0001", EngineModel(), TEXTS, small_args(), seed=4)
    # At most two calls in progress: batches cannot grow past two rows, so less is answered.
    assert limited["peak"] < free["peak"]
    assert all(phase["rows_per_batch"] <= 2.0 for phase in limited["overload"])


def test_with_the_loop_as_a_queue_refusals_wait_for_the_work_before_them() -> None:
    at_once = run_variant("", EngineModel(), TEXTS, small_args(), seed=4)
    queued = run_variant("loop_queue=1", EngineModel(), TEXTS, small_args(), seed=4)
    assert at_once["overload"][-1]["refusal_p99_ms"] == 0.0
    last = queued["overload"][-1]
    assert 0.2 < last["refusal_p99_ms"] < 100.0  # at least a refusal's own CPU, and not a deadline
    assert last["p99_ok_ms"] <= 100.0
