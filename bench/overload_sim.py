"""Overload in simulated time: millibatch's own batcher (admission, dispatcher, scheduler, delivery) against a
modelled engine and Poisson callers, on an event loop whose clock jumps ahead instead of waiting.

    .venv/bin/python -m bench.overload_sim --seeds 3 --variant "fixed-slack=SLACK_DECREASE=1,SLACK_INCREASE=0"

A benchmark on a shared VM cannot tell the controller's own losses from the machine's noise; this can. Batch
times follow a cost model (`--coefficients`, or fitted from a model directory's engine on this machine with
`--fit-model`) times a log-normal noise per batch, slowed by the share of the core the front end takes (CPU
seconds per answered call, per refusal and per batch, taken from the engine's core over the last 50 ms) and
stopped by host stalls (Poisson, exponential lengths: a stolen core stops the engine and the loop alike).
Each call is one STS-B sentence (its token count from the model's tokenizer) with a deadline; it is refused
before tokenizing when `Batcher.refusal` says so, else submitted and awaited until its deadline, as
`service.dataplane` does. Like bench.goodput: a rising sweep finds the peak goodput, then the overload phases
offer multiples of it, all on one batcher. One seed gives exactly the same run every time, so variants
(`--variant LABEL=KEY=VALUE,...`: a field of `EngineModel`, or a constant of `batching.admission`) compare
pair by pair on the same arrivals.

What it leaves out: gRPC, the answer's trip back, and everything the cost model does not capture; by default also
the loop's own delays (refusals and answers leave at once; `loop_queue=1` makes the loop one queue, each piece of
work waiting for the work before it). Its numbers bound what the admission design can do under Poisson arrivals;
they are not a prediction of a real run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.goodput import SWEEP_PAST_PEAK, fmt, past_peak
from bench.processes import checkouts, with_python_path
from bench.stats import Stamp, median, percentile, publish, stamp
from bench.texts import DEFAULT_STSB, TEXT_SETS, stsb_sentences, text_set
from bench.virtual_loop import VirtualTimeLoop
from millibatch.batching import admission as admission_module
from millibatch.batching.batcher import Batcher
from millibatch.batching.cost_model import CostModel, Observation, features
from millibatch.batching.profile import profile_shapes
from millibatch.batching.scheduler import BatchLimits
from millibatch.batching.work import Row
from millibatch.batching.workers import Job
from millibatch.engines.base import EngineInfo, EngineInputs, FloatArray
from millibatch.errors import DeadlineUnmeetable, MillibatchError
from millibatch.service.dataplane import LEAST_TOKENS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
DEFAULT_OUT = ROOT / "bench" / "results" / "overload_sim"
#: all-MiniLM-L6-v2 fp32 on one core of the 2-core AMD EPYC VM, one instance (2026-11-29,
#: `--fit-model models/all-MiniLM-L6-v2`): seconds = c0 + c1·rows + c2·rows·length + c3·rows·length².
DEFAULT_COEFFICIENTS = (2.31e-3, 1.82e-4, 2.45e-4, 2.9e-7)
#: Longest input, in tokens (all-MiniLM-L6-v2's).
MAX_LENGTH = 256
#: Seconds over which the front end's CPU is taken from the engine's core.
FRONT_END_WINDOW = 0.05
#: The engine keeps at least this share of its core, however busy the front end.
LEAST_ENGINE_SHARE = 0.1


@dataclass(frozen=True)
class EngineModel:
    """What the simulated server's engine and front end cost, and how the host interrupts them."""

    coefficients: tuple[float, float, float, float] = DEFAULT_COEFFICIENTS
    instances: int = 1
    #: Sigma of the log-normal factor on each batch's time.
    noise: float = 0.1
    #: Front-end CPU seconds per admitted call, per refused call and per batch (taken from the engine's core).
    answer_cpu: float = 400e-6
    refusal_cpu: float = 230e-6
    batch_cpu: float = 300e-6
    #: Host stalls per second, and their mean length in seconds.
    stall_rate: float = 0.0
    stall_mean: float = 0.005
    #: gRPC's concurrent-call limit (`max_concurrent_calls`, 0: none): past it a call is refused before any handler
    #: runs, for `limit_refusal_cpu` seconds of front-end CPU.
    call_limit: int = 0
    limit_refusal_cpu: float = 0.0
    #: 1: the event loop is one queue (its work in arrival order), so refusals and batches' answers wait for the
    #: loop; 0: they leave at once.
    loop_queue: int = 0

    def seconds(self, rows: int, length: int) -> float:
        return float(np.dot(self.coefficients, features(rows, length)))


class HostStalls:
    """Intervals in which the host runs something else: nothing of the server moves."""

    def __init__(self, rate: float, mean: float, rng: random.Random) -> None:
        self._rate, self._mean, self._rng = rate, mean, rng
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._horizon = 0.0

    def _extend(self, until: float) -> None:
        while self._rate > 0 and self._horizon <= until:
            start = self._horizon + self._rng.expovariate(self._rate)
            end = start + self._rng.expovariate(1 / self._mean)
            self._starts.append(start)
            self._ends.append(end)
            self._horizon = end

    def resume(self, t: float) -> float:
        """`t`, or the end of the stall it falls in."""
        self._extend(t)
        i = bisect.bisect_right(self._starts, t) - 1
        return self._ends[i] if i >= 0 and t < self._ends[i] else t

    def finish(self, start: float, work: float) -> float:
        """When `work` seconds of running, begun at `start`, are done, stalls skipped."""
        t = self.resume(start)
        while True:
            self._extend(t + work)
            i = bisect.bisect_right(self._starts, t)
            if i >= len(self._starts) or self._starts[i] >= t + work:
                return t + work
            work -= self._starts[i] - t
            t = self._ends[i]


class FrontEnd:
    """The front end's CPU on the engine's core over the last FRONT_END_WINDOW seconds; with `queued`, also the
    event loop as one queue: work waits for the work before it, so refusals and answers leave later."""

    def __init__(self, queued: bool = False) -> None:
        self._spent: deque[tuple[float, float]] = deque()
        self._total = 0.0
        self._queued = queued
        self._free_at = 0.0

    def spend(self, now: float, seconds: float) -> float:
        """Take `seconds` of the loop from `now`; returns when that work is done."""
        self._spent.append((now, seconds))
        self._total += seconds
        if not self._queued:
            return now
        self._free_at = max(now, self._free_at) + seconds
        return self._free_at

    def load(self, now: float) -> float:
        while self._spent and self._spent[0][0] < now - FRONT_END_WINDOW:
            self._total -= self._spent.popleft()[1]
        return self._total / FRONT_END_WINDOW


class SimEngine:
    """The batcher's view of the engine: shapes and outputs only; batches never reach `run`."""

    def __init__(self, instances: int) -> None:
        self._info = EngineInfo("simulated", "cpu", "fp32", instances, "bench.overload_sim")

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def output_names(self) -> list[str]:
        return ["embeddings"]

    def padded_length(self, length: int) -> int:
        return length

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        raise AssertionError("the simulated workers never run the engine")

    def close(self) -> None:
        pass


class SimWorkers:
    """`batching.workers.EngineWorkers` in simulated time: each instance takes the next job as it frees, checks
    a prepared job is still fresh, and finishes it after the engine model's time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, model: EngineModel, stalls: HostStalls, front: FrontEnd,
                 on_done: Callable[[Job], None], on_stale: Callable[[Job], None], rng: random.Random) -> None:
        self._loop, self._model, self._stalls, self._front = loop, model, stalls, front
        self._on_done, self._on_stale, self._rng = on_done, on_stale, rng
        self._ready: deque[Job] = deque()
        self._free = list(range(model.instances))
        #: Engine seconds run, and batches and rows run.
        self.busy = 0.0
        self.batches = 0
        self.rows = 0

    def submit(self, job: Job) -> None:
        self._ready.append(job)
        self._start_next()

    def withdraw(self, job: Job) -> bool:
        try:
            self._ready.remove(job)
        except ValueError:
            return False
        return True

    def wait_prepared(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        self._ready.clear()

    def _start_next(self) -> None:
        now = self._loop.time()
        while self._free and self._ready:
            job = self._ready.popleft()
            if not job.fresh(now):
                self._loop.call_soon(self._on_stale, job)
                continue
            instance = self._free.pop()
            # The watchdog reads real time: a simulated batch is as young as it is in real time.
            job.instance, job.started, job.started_perf = instance, now, time.perf_counter()
            model = self._model
            share = max(LEAST_ENGINE_SHARE, 1.0 - self._front.load(now))
            work = model.seconds(len(job.batch), job.inputs.padded_length) * math.exp(
                self._rng.gauss(0.0, model.noise)) / share
            self._loop.call_at(self._stalls.finish(now, work), self._done, job, instance)

    def _done(self, job: Job, instance: int) -> None:
        now = self._loop.time()
        assert job.started is not None
        job.engine_seconds = now - job.started
        rows = len(job.batch)
        job.outputs = {"embeddings": np.zeros((rows, 1), dtype=np.float32)}
        self.busy += job.engine_seconds
        self.batches += 1
        self.rows += rows
        delivered = self._front.spend(now, self._model.batch_cpu)
        if delivered > now:  # the loop answers the batch's callers once it has done what came before
            self._loop.call_at(delivered, self._on_done, job)
        else:
            self._loop.call_soon(self._on_done, job)
        self._free.append(instance)
        self._start_next()


class SimBatcher(Batcher):
    """The real batcher with simulated workers."""

    def __init__(self, workers: Callable[[asyncio.AbstractEventLoop, Batcher], SimWorkers], *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._make_workers = workers
        self.sim_workers: SimWorkers | None = None

    def _workers(self, loop: asyncio.AbstractEventLoop) -> SimWorkers:
        self.sim_workers = self._make_workers(loop, self)
        return self.sim_workers


@dataclass
class Tally:
    """What one phase's calls came to."""

    ok: int = 0
    refused: int = 0
    shed: int = 0
    gave_up: int = 0
    ok_seconds: list[float] = field(default_factory=list)
    #: Admission's slack and wait correction summed over the phase's arrivals (for their means).
    arrivals: int = 0
    slack: float = 0.0
    correction: float = 0.0
    refusal_seconds: list[float] = field(default_factory=list)


class Simulation:
    """One seed's server and callers: phases run one after another on the same batcher."""

    def __init__(self, model: EngineModel, texts: list[tuple[int, int]], deadline: float, seed: int) -> None:
        self.model, self.texts, self.deadline = model, texts, deadline
        self.rng = random.Random(seed)
        self.stalls = HostStalls(model.stall_rate, model.stall_mean, random.Random(seed + 1))
        self.front = FrontEnd(bool(model.loop_queue))
        #: Calls admitted and not yet ended (refused calls end at once here), as gRPC's call limit counts them.
        self.in_progress = 0
        self.loop = asyncio.get_running_loop()
        engine_rng = random.Random(seed + 2)

        def workers(loop: asyncio.AbstractEventLoop, batcher: Batcher) -> SimWorkers:
            return SimWorkers(loop, model, self.stalls, self.front, batcher.dispatcher.finished,
                              batcher.dispatcher.stale, engine_rng)

        engine, limits = SimEngine(model.instances), BatchLimits()
        # Seeded as at start-up, from the warm-up profile's shapes (timed without noise): the online refits
        # alone, all from the few shapes a load forms, cannot tell per-batch from per-row cost.
        cost = CostModel()
        cost.fit_profile([Observation(rows, length, model.seconds(rows, length))
                          for rows, length in profile_shapes(limits, MAX_LENGTH, engine)])
        self.batcher = SimBatcher(workers, engine, limits, cost_model=cost, clock=self.loop.time)

    async def phase(self, rate: float, seconds: float) -> dict[str, Any]:
        """Poisson calls at `rate` for `seconds`; every call ended before it returns."""
        tally = Tally()
        workers = self.batcher.sim_workers
        assert workers is not None
        busy, batches, rows = workers.busy, workers.batches, workers.rows
        started = self.loop.time()
        arrivals = []
        t = started
        while (t := t + self.rng.expovariate(rate)) < started + seconds:
            arrivals.append((t, self.texts[self.rng.randrange(len(self.texts))]))
        calls: list[asyncio.Task[None]] = []
        for arrival, (tokens, chars) in arrivals:
            handled = self.stalls.resume(arrival)
            await asyncio.sleep(handled - self.loop.time())
            call = self._call(arrival, tokens, chars, tally)
            if call is not None:
                calls.append(asyncio.ensure_future(call))
        if calls:
            await asyncio.wait(calls)
        ran = workers.batches - batches
        return {"offered_rps": len(arrivals) / seconds, "goodput_rps": tally.ok / seconds, "ok": tally.ok,
                "refused": tally.refused, "shed": tally.shed, "gave_up": tally.gave_up,
                "p99_ok_ms": percentile(tally.ok_seconds, 99) * 1e3 if tally.ok_seconds else None,
                "rows_per_batch": (workers.rows - rows) / ran if ran else 0.0,
                "engine_busy": (workers.busy - busy) / seconds / self.model.instances,
                "slack_mean": tally.slack / tally.arrivals if tally.arrivals else 1.0,
                "correction_mean": tally.correction / tally.arrivals if tally.arrivals else 1.0,
                "refusal_p99_ms": percentile(tally.refusal_seconds, 99) * 1e3 if tally.refusal_seconds else None}

    def _call(self, arrival: float, tokens: int, chars: int, tally: Tally) -> Coroutine[Any, Any, None] | None:
        """One call, as service.dataplane handles it: a refusal ends here; else the coroutine that awaits it."""
        batcher, now, model = self.batcher, self.loop.time(), self.model
        deadline = arrival + self.deadline
        tally.arrivals += 1
        tally.slack += batcher.admission.slack
        tally.correction += batcher.admission.correction
        if model.call_limit and self.in_progress >= model.call_limit:
            tally.refused += 1
            tally.refusal_seconds.append(self.front.spend(now, model.limit_refusal_cpu) - arrival)
            return None
        if batcher.refusal(deadline, 1, LEAST_TOKENS + chars // 6) is not None:
            tally.refused += 1
            tally.refusal_seconds.append(self.front.spend(now, model.refusal_cpu) - arrival)
            return None
        handled = self.front.spend(now, model.answer_cpu)
        try:
            item = batcher.submit([Row(ids=np.ones(tokens, np.int64), type_ids=np.zeros(tokens, np.int64))], deadline)
        except MillibatchError:
            tally.refused += 1
            tally.refusal_seconds.append(handled - arrival)
            return None

        self.in_progress += 1

        async def wait() -> None:
            try:
                await asyncio.wait_for(item.future, deadline - self.loop.time())
                batcher.check_in_time(item)
            except TimeoutError:
                tally.gave_up += 1
            except DeadlineUnmeetable:
                tally.shed += 1
            else:
                tally.ok += 1
                tally.ok_seconds.append(self.loop.time() - arrival)
            finally:
                self.in_progress -= 1

        return wait()


async def run_seed(model: EngineModel, texts: list[tuple[int, int]], args: argparse.Namespace,
                   seed: int) -> dict[str, Any]:
    """Sweep to the peak, then the overload multiples, on one simulated server."""
    sim = Simulation(model, texts, args.deadline_ms / 1000, seed)
    await sim.batcher.start()
    sweep: list[dict[str, Any]] = []
    rate, best, misses = args.start_rate, 0.0, 0
    while misses < SWEEP_PAST_PEAK:  # bench.goodput's rule
        result = await sim.phase(rate, args.duration)
        sweep.append(result)
        misses = past_peak(misses, result["goodput_rps"], best)
        best = max(best, result["goodput_rps"])
        rate *= args.step
    overload = []
    for multiple in args.multiples:
        result = await sim.phase(best * multiple, args.duration)
        overload.append({"multiple": multiple, **result})
    await sim.batcher.stop(1.0)
    return {"seed": seed, "peak": best, "sweep": sweep, "overload": overload}


def simulate(model: EngineModel, texts: list[tuple[int, int]], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(run_seed(model, texts, args, seed))
    finally:
        loop.close()


def apply(spec: str, base: EngineModel) -> tuple[EngineModel, dict[str, Any]]:
    """A variant's KEY=VALUE,...: EngineModel fields, and batching.admission constants (upper case)."""
    model_fields = {f.name: f for f in fields(EngineModel)}
    changes: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    for pair in filter(None, spec.split(",")):
        key, _, value = pair.partition("=")
        if key in model_fields:
            changes[key] = int(value) if key in ("instances", "call_limit", "loop_queue") else float(value)
        elif key.isupper() and hasattr(admission_module, key):
            constants[key] = type(getattr(admission_module, key))(float(value))
        else:
            raise SystemExit(f"unknown variant key {key!r}: an EngineModel field or a batching.admission constant")
    return replace(base, **changes), constants


def run_variant(spec: str, base: EngineModel, texts: list[tuple[int, int]], args: argparse.Namespace,
                seed: int) -> dict[str, Any]:
    model, constants = apply(spec, base)
    saved = {key: getattr(admission_module, key) for key in constants}
    for key, value in constants.items():
        setattr(admission_module, key, value)
    try:
        return simulate(model, texts, args, seed)
    finally:
        for key, value in saved.items():
            setattr(admission_module, key, value)


def token_counts(model_dir: Path, texts: list[str]) -> list[tuple[int, int]]:
    """(tokens, characters) of each text, as the model's tokenizer counts them (truncated to 256)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    return [(len(encoding.ids), len(text)) for encoding, text in zip(tokenizer.encode_batch(texts), texts, strict=True)]


def fit_coefficients(model_dir: Path) -> tuple[float, float, float, float]:
    """The cost model millibatch fits at start-up for `model_dir` on this machine (one core, one instance)."""
    import os

    from millibatch.service.model_loading import load_model
    from millibatch.settings import Settings

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    served = load_model(model_dir, Settings.model_validate({"instances": 1}))
    fitted = served.batcher.cost_model.coefficients
    return (fitted["overhead"], fitted["per_row"], fitted["per_token"], fitted["per_token_squared"])


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, argv: list[str], when: Stamp) -> list[str]:
    lines = [f"`.venv/bin/python -m bench.overload_sim {' '.join(argv)}`, {when}: simulated time, the batcher of this "
             f"checkout, {args.deadline_ms:g} ms deadlines, {args.duration:g} s per phase, seeds "
             f"{', '.join(str(s) for s in args.seed_list)}. Held: the lowest goodput of the overload phases over the "
             "peak (the best goodput of the rising sweep). Missed: admitted calls that did not finish in time (shed, "
             "or their caller gave up at the deadline); slack and correction: admission's, averaged over the "
             "phase's arrivals; last: the last overload phase.", "",
             "| variant | seed | peak/s | " + " | ".join(f"{m:g}×" for m in args.multiples)
             + " | held | refused at 1× | missed at 1×, last | slack at 1×, last | correction at 1×, last "
             "| rows/batch at 1×, last | refusal p99 ms at 1×, last |",
             "|---|---|---|" + "---|" * len(args.multiples) + "---|---|---|---|---|---|---|"]
    for label, seeds in runs.items():
        for run in seeds:
            ratios = [p["goodput_rps"] / run["peak"] for p in run["overload"]]
            first, last = run["overload"][0], run["overload"][-1]
            run["held"] = min(ratios)
            lines.append(f"| {label} | {run['seed']} | {run['peak']:.1f} | "
                         + " | ".join(f"{r:.2f}" for r in ratios)
                         + f" | {run['held']:.2f} | {first['refused']} "
                         f"| {first['shed'] + first['gave_up']}, {last['shed'] + last['gave_up']} "
                         f"| {first['slack_mean']:.2f}, {last['slack_mean']:.2f} "
                         f"| {first['correction_mean']:.2f}, {last['correction_mean']:.2f} "
                         f"| {first['rows_per_batch']:.1f}, {last['rows_per_batch']:.1f} "
                         f"| {fmt(first.get('refusal_p99_ms'), 1)}, {fmt(last.get('refusal_p99_ms'), 1)} |")
    lines += ["", "Medians over the seeds:", "", "| variant | peak/s | " + " | ".join(f"{m:g}×" for m in args.multiples)
              + " | held |", "|---|---|" + "---|" * len(args.multiples) + "---|"]
    for label, seeds in runs.items():
        columns = [median([run["overload"][i]["goodput_rps"] / run["peak"] for run in seeds])
                   for i in range(len(args.multiples))]
        lines.append(f"| {label} | {median([run['peak'] for run in seeds]):.1f} | "
                     + " | ".join(f"{c:.2f}" for c in columns) + f" | {median([run['held'] for run in seeds]):.2f} |")
    # A variant that lowers the peak raises every ratio to it: compare variants by calls answered in time.
    lines += ["", "Goodput in calls/s, medians over the seeds:", "",
              "| variant | " + " | ".join(f"{m:g}×" for m in args.multiples) + " |",
              "|---|" + "---|" * len(args.multiples)]
    for label, seeds in runs.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{median([run['overload'][i]['goodput_rps'] for run in seeds]):.1f}" for i in range(len(args.multiples)))
            + " |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.overload_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE,...",
                        help="a variant beside `default`: EngineModel fields, batching.admission constants")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant: seeds 1..N, alike for every variant")
    parser.add_argument("--texts", choices=TEXT_SETS, default="sts")
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0, help="simulated seconds per phase")
    parser.add_argument("--start-rate", type=float, default=20.0)
    parser.add_argument("--step", type=float, default=1.25)
    parser.add_argument("--multiples", type=lambda s: [float(x) for x in s.split(",")], default=[1, 1.5, 2, 3, 4, 5])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL, help="its tokenizer counts the texts' tokens")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    parser.add_argument("--coefficients", type=lambda s: tuple(float(x) for x in s.split(",")),
                        default=DEFAULT_COEFFICIENTS, help="cost model c0,c1,c2,c3 of the simulated engine")
    parser.add_argument("--fit-model", action="store_true",
                        help="fit the coefficients from --model-dir's engine on this machine instead")
    parser.add_argument("--engine", default="", metavar="KEY=VALUE,...", help="EngineModel fields for every variant")
    parser.add_argument("--baseline", action="append", default=[], metavar="REF",
                        help="also run every variant with the batcher of git REF (its own bench.overload_sim)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def child_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """This run's settings for a checkout's own bench.overload_sim (a --baseline)."""
    argv = ["--seeds", str(args.seeds), "--texts", args.texts, "--deadline-ms", str(args.deadline_ms),
            "--duration", str(args.duration), "--start-rate", str(args.start_rate), "--step", str(args.step),
            "--multiples", ",".join(f"{m:g}" for m in args.multiples), "--model-dir", str(args.model_dir.resolve()),
            "--stsb", str(args.stsb.resolve()), "--coefficients", ",".join(repr(c) for c in args.coefficients),
            "--engine", args.engine, "--out", str(out)]
    for spec in args.variant:
        argv += ["--variant", spec]
    return argv


def baseline_runs(refs: list[str], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every variant run by each ref's own bench.overload_sim, its labels suffixed with @REF."""
    runs: dict[str, list[dict[str, Any]]] = {}
    with checkouts(refs, "overload-sim-") as trees, tempfile.TemporaryDirectory() as scratch:
        for ref, tree in trees.items():
            out = Path(scratch) / ref.replace("/", "_")
            subprocess.run([sys.executable, "-m", "bench.overload_sim", *child_argv(args, out)], cwd=tree, check=True,
                           env={**os.environ, "PYTHONPATH": with_python_path(tree)})
            child = json.loads((out / "results.json").read_text(encoding="utf-8"))
            runs.update({f"{label}@{ref}": seeds for label, seeds in child["runs"].items()})
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.seed_list = list(range(1, args.seeds + 1))
    if args.fit_model:
        args.coefficients = fit_coefficients(args.model_dir)
        print(f"fitted coefficients: {','.join(f'{c:.4g}' for c in args.coefficients)}", flush=True)
    base, _ = apply(args.engine, EngineModel(coefficients=args.coefficients))
    texts = token_counts(args.model_dir, text_set(args.texts, stsb_sentences(args.stsb)))
    when = stamp()
    runs: dict[str, list[dict[str, Any]]] = {}
    for spec in ["default=", *args.variant]:
        label, _, changes = spec.partition("=")
        runs[label] = []
        for seed in args.seed_list:
            run = run_variant(changes, base, texts, args, seed)
            runs[label].append(run)
            print(f"{label} seed {seed}: peak {run['peak']:.1f}/s, overload "
                  + ", ".join(f"{p['multiple']:g}× {p['goodput_rps']:.1f}" for p in run["overload"]), flush=True)
    if args.baseline:
        runs.update(baseline_runs(args.baseline, args))
    lines = report(runs, args, argv, when)
    args.out.mkdir(parents=True, exist_ok=True)
    publish(args.out, {"argv": argv, "engine": base.__dict__, "runs": runs}, lines, when)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
