"""What millibatch's own request path costs per call, without gRPC.

Embed is called through the edge with the request's bytes and a stand-in context, on a real server whose
engine does nothing, on this build and on baselines, alternating build by build.

    .venv/bin/python -m bench.handler_path                          # this build
    .venv/bin/python -m bench.handler_path --baseline f9792af       # beside another build
    .venv/bin/python -m bench.handler_path --cold --baseline f9792af

Answered calls go in groups of 1, 4 and 8 at once: each group is one batch (no wait for company,
`max_delay_ms` 0), so a group of one pays the whole batch's work and a group of eight an eighth of it.
Each answered call runs as its own task, as gRPC runs it. Refused calls
find a queue whose predicted wait outlasts every deadline, as in bench.frontend's `refused`; they are
awaited one by one on the measuring task (a refusal never waits), so the figure is the handler path
alone. The CPU is the process's (the event loop and the no-op engine's thread), per call, median of
the rounds. `--cold` writes 8 MB before each group, untimed, as a call meets the caches beside a busy
engine. gRPC's own share is what bench.frontend measures; this measures what millibatch adds to it,
without the noise of sockets and threads that gRPC brings. Last, one scheduling decision is timed with
8 and 32 sentences waiting: what the dispatcher asks on every arrival while every instance is busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "handler_path"
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
GROUPS = (1, 4, 8)
#: Rows waiting when the dispatcher asks the scheduler for a full batch (as on every arrival while every
#: instance is busy: about 8 at five times the peak, docs/OVERLOAD.md).
BACKLOGS = (8, 32)
#: Decisions timed per backlog, each on a freshly filled queue.
DECISIONS = 300
#: Written before each group with --cold: more than this machine's L2 and much of its L3.
FLUSH_BYTES = 8 << 20
#: The deadline every call carries, as in the goodput benchmark.
DEADLINE_SECONDS = 0.1


class Context:
    """What a handler asks of grpc.aio's servicer context, for a call with `DEADLINE_SECONDS` left."""

    def __init__(self) -> None:
        self._code: Any = None

    def time_remaining(self) -> float:
        return DEADLINE_SECONDS

    def set_code(self, code: Any) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        pass

    def code(self) -> Any:
        return self._code

    def invocation_metadata(self) -> tuple[()]:
        return ()


class Registered:
    """Stands in for a grpc.aio server: keeps the method handlers service.edge registers. (service.edge has
    a private class much like it; this one is the bench's own so that older builds, measured as
    baselines with this script, need nothing new from theirs.)"""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


async def measure(model: Path, texts: list[str], calls: int, cold: bool) -> dict[str, Any]:
    """µs of process CPU per call, answered in each group size and refused, on the build importable here."""
    import numpy as np

    from bench.frontend import NullEngine
    from millibatch.service.edge import register
    from millibatch.service.inference_servicer import InferenceServicer
    from millibatch.service.server import InferenceServer
    from millibatch.settings import load_settings
    from millibatch.v1 import inference_pb2 as pb
    from millibatch.v1 import inference_pb2_grpc

    settings = load_settings({"models": [str(model)], "host": "127.0.0.1", "port": 0, "metrics_port": 0,
                              "http_port": 0, "profile_on_start": False, "log_level": "warning", "max_delay_ms": 0})
    server = InferenceServer(settings)
    await server.start()
    try:
        # The real engine's fitted costs, before the no-op engine's batches refit them towards zero.
        c0, c1, c2, c3 = next(iter(server.registry.models.values())).batcher.cost_model.coefficients.values()
        coefficients = (c0, c1, c2, c3)
        for served in server.registry.models.values():
            served.batcher.engine = NullEngine(served.engine, served.manifest.dimensions)
        registered = Registered()
        register(registered, inference_pb2_grpc.add_InferenceServicer_to_server, InferenceServicer(server.plane),
                 server.plane)
        embed = registered.handlers["Embed"].unary_unary
        requests = [pb.EmbedRequest(inputs=[text], truncate=True).SerializeToString()
                    for text in texts[:calls]]
        flush = np.ones(FLUSH_BYTES, dtype=np.uint8)

        async def run(group: int) -> tuple[float, list[Any]]:
            """Calls in groups of `group`, each its own task as gRPC runs it; a group of 0 awaits each call
            in turn on this task (for refusals, which never wait: no task's cost in the figure)."""
            cpu, codes = 0.0, []
            for start in range(0, len(requests), group or 1):
                if cold:
                    np.add(flush, 1, out=flush)
                raws = requests[start:start + (group or 1)]
                contexts = [Context() for _ in raws]
                began = time.process_time()
                if group:
                    await asyncio.gather(*(embed(raw, ctx) for raw, ctx in zip(raws, contexts, strict=True)))
                else:
                    await embed(raws[0], contexts[0])
                cpu += time.process_time() - began
                codes += [ctx.code() for ctx in contexts]
            return cpu / len(requests) * 1e6, codes

        await run(4)  # warm-up: imports, first batches, the cost model's first refits
        answered = {}
        for group in GROUPS:
            answered[str(group)], codes = await run(group)
            if any(code is not None for code in codes):
                raise RuntimeError(f"answered calls ended {set(codes)}")
        for served in server.registry.models.values():  # every call's predicted wait outlasts its deadline
            served.batcher.admission.queued_seconds = 1e9
        refused, codes = await run(0)
        if {getattr(code, "name", code) for code in codes} != {"RESOURCE_EXHAUSTED"}:
            raise RuntimeError(f"refused calls ended {set(codes)}")
        served = next(iter(server.registry.models.values()))
        decision = {str(backlog): decision_us(served, coefficients, texts, backlog) for backlog in BACKLOGS}
        return {"answered_us": answered, "refused_us": refused, "decision_us": decision}
    finally:
        await server.stop()


def decision_us(served: Any, coefficients: tuple[float, float, float, float], texts: list[str],
                backlog: int) -> float:
    """µs of CPU of one scheduling decision for a full batch (`Scheduler.next(only_full=True)`) with
    `backlog` sentences waiting, each decision on the same scheduler with its queue filled afresh (what
    it keeps between decisions is kept, as in a server); the cost model as the real engine's profile
    fitted it."""
    from millibatch.batching.cost_model import CostModel
    from millibatch.batching.scheduler import Scheduler
    from millibatch.batching.work import WorkItem
    from millibatch.service.tokenization import to_rows

    batcher = served.batcher
    rows = to_rows(served.encoder.encode(texts[:backlog], truncate=True))
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(batcher.limits, CostModel(coefficients), batcher.engine.padded_length)
    cpu = 0.0
    for _ in range(DECISIONS):
        now = time.monotonic()
        for index, row in enumerate(rows):
            item = WorkItem(rows=[row], deadline=now + DEADLINE_SECONDS - index * 1e-4, future=loop.create_future(),
                            enqueued_at=now)
            scheduler.add(item, now)
        began = time.process_time()
        scheduler.next(now, only_full=True)
        cpu += time.process_time() - began
        scheduler.take_all()
    return cpu / DECISIONS * 1e6


def child(checkout: Path, model: Path, texts: Path, calls: int, cold: bool) -> dict[str, Any]:
    """`measure` in a process of its own, importing the build in `checkout`."""
    argv = [sys.executable, str(Path(__file__).resolve()), "measure", "--model", str(model), "--texts", str(texts),
            "--calls", str(calls), *(["--cold"] if cold else [])]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {checkout} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(builds: list[str], rounds: list[dict[str, dict[str, Any]]], cold: bool, calls: int) -> list[str]:
    """The results table: medians over the rounds, each build beside the first."""
    from bench.stats import median

    def figure(build: str, key: str) -> float:
        def one(result: dict[str, Any]) -> float:
            if key == "refused":
                return float(result["refused_us"])
            if key.startswith("decision "):
                # Baselines measured before decisions were: NaN, shown as such.
                return float(result.get("decision_us", {}).get(key.split()[1], float("nan")))
            return float(result["answered_us"][key])

        return median([one(r[build]) for r in rounds])

    keys = [str(g) for g in GROUPS] + ["refused"] + [f"decision {b}" for b in BACKLOGS]
    header = [f"answered, {g} at once" for g in GROUPS] + ["refused"] + [
        f"a decision, {b} waiting" for b in BACKLOGS]
    lines = [
        f"µs of process CPU per call{' (8 MB written before each group)' if cold else ''}, median of "
        f"{len(rounds)} rounds of {calls} calls each; STS-B sentences, all-MiniLM-L6-v2's tokenizer, a no-op engine.",
        "",
        "| build | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]
    for build in builds:
        lines.append(f"| {build} | " + " | ".join(f"{figure(build, k):.1f}" for k in keys) + " |")
    for build in builds[1:]:
        ratios = " | ".join(f"{figure(builds[0], k) / figure(build, k):.2f}" for k in keys)
        lines.append(f"| {builds[0]} / {build} | {ratios} |")
    lines += ["", "Per round:", ""]
    for index, by_build in enumerate(rounds, 1):
        for build in builds:
            r = by_build[build]
            parts = ", ".join(f"{g} at once {r['answered_us'][str(g)]:.1f}" for g in GROUPS)
            decisions = ", ".join(f"{b} waiting {us:.1f}" for b, us in r.get("decision_us", {}).items())
            lines.append(f"- round {index}, {build}: {parts}; refused {r['refused_us']:.1f}; decision: {decisions}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.handler_path", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "measure"),
                        help="measure: one build, in this process (what run starts per build and round)")
    parser.add_argument("--baseline", action="append", default=[], metavar="REF", help="another build to measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="calls per group size and round")
    parser.add_argument("--cold", action="store_true", help="write 8 MB before each group of calls")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--texts", type=Path, default=None, help="JSON list of texts (default: STS-B sentences)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.command == "measure":
        texts = json.loads(args.texts.read_text(encoding="utf-8"))
        result = asyncio.run(measure(args.model, texts, args.calls, args.cold))
        print(json.dumps(result))
        return 0

    from bench.processes import remove_worktree, worktree
    from bench.stats import publish, stamp
    from bench.texts import DEFAULT_STSB, stsb_sentences

    args.out.mkdir(parents=True, exist_ok=True)
    texts = args.texts
    if texts is None:
        (args.out / "raw").mkdir(exist_ok=True)
        texts = args.out / "raw" / "texts.json"
        texts.write_text(json.dumps(stsb_sentences(DEFAULT_STSB)), encoding="utf-8")
    checkouts = {"this build": ROOT}
    scratch = Path(tempfile.mkdtemp(prefix="handler-path-"))
    checkouts.update({ref: worktree(ref, scratch) for ref in args.baseline})
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for index in range(args.rounds):
            # Alternate which build goes first, so a drift in the machine's speed does not favour one.
            order = list(checkouts) if index % 2 == 0 else list(reversed(checkouts))
            rounds.append({build: child(checkouts[build], args.model.resolve(), texts.resolve(), args.calls,
                                        args.cold) for build in order})
            print(f"round {index + 1}: " + "; ".join(
                f"{build} {r['answered_us']} refused {r['refused_us']:.1f}" for build, r in rounds[-1].items()),
                flush=True)
    finally:
        for ref in args.baseline:
            remove_worktree(checkouts[ref])
    when = stamp()
    command = " ".join(["bench.handler_path", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"# {__doc__.splitlines()[0]}", "", f"`.venv/bin/python -m {command}`, {when.date_utc} UTC, commit "
             f"{when.commit}, {when.cpu}, {when.cores} cores.", "", *report(list(checkouts), rounds, args.cold,
                                                                           args.calls)]
    publish(args.out, {"builds": list(checkouts), "rounds": rounds, "cold": args.cold, "calls": args.calls},
            lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
