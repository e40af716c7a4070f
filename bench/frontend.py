"""The front end's own ceiling: calls per second per core with an engine that does nothing, and what a
refused call costs the server.

    .venv/bin/python -m bench.frontend                       # both modes, 3 alternating rounds
    .venv/bin/python -m bench.frontend --modes ok --rounds 5
    .venv/bin/python -m bench.frontend --modes ok,refused --baseline c4c0e2d   # beside another build
    .venv/bin/python -m bench.frontend --modes refused,refused+ee   # gRPC's EventEngine on (+ee), beside off

The server is the real `millibatch serve` path (gRPC, decoding, admission, tokenizing, the batcher,
the engine threads, delivery, the response) with the engine swapped for one that returns zeros at once
(`ok`), or with admission seeing a queue that outlasts every deadline, so each call is refused with
RESOURCE_EXHAUSTED before tokenizing (`refused`). It runs pinned to one core, the load generator (a
closed loop) on the other. Server CPU per call is what every call costs the front end; calls per
second per server core is the ceiling every other figure lives under.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from bench.peers.catalog import DOORS
from bench.processes import (
    Launch,
    checkouts,
    cores_for,
    free_port,
    process_cpu,
    run_loadgen,
    start_server,
    wait_ready,
)
from bench.stats import publish, stamp
from bench.texts import DEFAULT_STSB, stsb_sentences
from millibatch.engines.model_dir import Manifest
from millibatch.engines.thread_priority import EnginePriority

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
DEFAULT_OUT = ROOT / "bench" / "results" / "frontend"
#: ok / refused: the real server; grpc-echo / grpc-refuse: gRPC's own floor, a bare grpc.aio server
#: whose Embed answers a fixed 384-float response or RESOURCE_EXHAUSTED and does nothing else.
#: grpc-limit: the same bare server refusing through gRPC's own concurrent-call limit, before any handler.
#: grpc-echo-wait: the echo after waiting ECHO_WAIT_SECONDS for a worker thread, as a handler waits for an
#: engine; it reports its own time in the response's timing.total_us (bench.call_path's floors).
#: grpc-abort: grpc-refuse through `context.abort`, which sends the status alone (one HTTP/2 frame: a
#: returning handler's status follows an empty response message, three frames) but raises through grpc.aio.
MODES = ("ok", "refused", "grpc-echo", "grpc-refuse", "grpc-limit", "grpc-echo-wait", "grpc-abort")
ECHO_WAIT_SECONDS = 0.003
#: Suffixes a mode may carry, e.g. `refused+busy+batch`: `+ee`, gRPC's EventEngine carries the connections
#: (`grpc_event_engine`); `+batch`, gRPC's poller thread runs SCHED_BATCH (`grpc_poller_policy: batch`);
#: `+busy`, an engine thread computes batches of the real model back to back beside the front end, at the
#: engine's priority, as under overload, and its CPU is counted apart from the front end's; `+idle`, that
#: thread runs SCHED_IDLE (`engine_priority: idle`) instead of at nice +5; `+pace`, a thread with a short
#: time slice wakes every PACE_SECONDS ($FRONTEND_PACE_MS, default 1 ms), so that a SCHED_BATCH poller waits
#: at most that long behind the engine;
#: `+overload` / `+normal`, the real server under that `grpc_poller_policy` (without either, its default);
#: `+unread` / `+read`, the real server with `refuse_unread` on / off (without either, its default);
#: `+v2` / `+http`, the real server called through another door by the client its users would bring:
#: KServe V2 with tritonclient (the load generator's `triton-text`), or the OpenAI HTTP door (`openai`).
SUFFIXES = ("ee", "batch", "busy", "idle", "pace", "overload", "normal", "unread", "read", *DOORS)
PACE_SECONDS = float(os.environ.get("FRONTEND_PACE_MS", "1")) / 1000
#: The rows and tokens of the busy engine's batches: about what the batcher forms at 5x the peak.
BUSY_BATCH = (8, 24)


def base_mode(mode: str) -> str:
    """The mode without its suffixes."""
    return mode.split("+", 1)[0]


def suffixes(mode: str) -> set[str]:
    """The mode's suffixes (see SUFFIXES)."""
    return set(mode.split("+")[1:])


def poller_policy(flags: Collection[str]) -> str | None:
    """The `grpc_poller_policy` a mode's suffixes ask for; None: the server's default."""
    return next((policy for policy in ("batch", "overload", "normal") if policy in flags), None)


def start_pacer() -> None:
    """The server's own pacer (service/poller_pacing.py), waking every PACE_SECONDS from now on."""
    from millibatch.service.poller_pacing import Pacer

    Pacer(PACE_SECONDS).start()


def start_busy_engine(model: Path, priority: EnginePriority = "nice") -> None:
    """A daemon thread at the engine threads' priority running the model's ONNX graph on a BUSY_BATCH batch
    back to back (ONNX Runtime releases the GIL while it computes); prints its thread id for `measure`."""
    import threading

    import numpy as np

    from millibatch.engines.base import EngineInputs
    from millibatch.engines.model_dir import Manifest
    from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
    from millibatch.engines.thread_priority import lower_thread_priority

    engine = OnnxRuntimeCpuEngine(model / Manifest.load(model).onnx_file)
    ids = np.full(BUSY_BATCH, 1000, dtype=np.int64)
    batch = EngineInputs(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))

    def compute() -> None:
        lower_thread_priority(priority)
        print(f"busy engine thread {threading.get_native_id()}", flush=True)
        while True:
            engine.run(batch, 0)

    threading.Thread(target=compute, name="busy-engine", daemon=True).start()


class NullEngine:
    """Stands in for a model's engine: zeros of the right shape, at once."""

    def __init__(self, inner: Any, dimensions: int) -> None:
        self.inner = inner
        self.info = inner.info
        self.output_names = inner.output_names
        self._dimensions = dimensions

    def padded_length(self, length: int) -> int:
        return int(self.inner.padded_length(length))

    def run(self, inputs: Any, instance: int) -> dict[str, Any]:
        import numpy as np

        rows = inputs.input_ids.shape[0]
        return {name: np.zeros((rows, self._dimensions), np.float32) for name in self.output_names}

    def close(self) -> None:
        self.inner.close()


async def serve_floor(port: int, mode: str, flags: Collection[str]) -> None:
    """A grpc.aio server with only millibatch.v1.Inference, whose Embed does nothing but answer."""
    import grpc

    from millibatch.v1 import inference_pb2 as pb
    from millibatch.v1 import inference_pb2_grpc

    answer = pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.5] * 384)])

    hold = asyncio.Event()
    worker = concurrent.futures.ThreadPoolExecutor(1)

    class Floor(inference_pb2_grpc.InferenceServicer):
        async def Embed(self, request: Any, context: Any) -> Any:
            if mode == "grpc-limit":  # the one call the limit admits never ends
                await hold.wait()
            if mode == "grpc-echo-wait":
                started = time.perf_counter()
                await asyncio.get_running_loop().run_in_executor(worker, time.sleep, ECHO_WAIT_SECONDS)
                waited = pb.EmbedResponse()
                waited.CopyFrom(answer)
                waited.timing.total_us = round((time.perf_counter() - started) * 1e6)
                return waited
            if mode == "grpc-abort":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy")
            if mode == "grpc-refuse":
                context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                context.set_details("server busy")
                return None
            return answer

    server = grpc.aio.server(maximum_concurrent_rpcs=1 if mode == "grpc-limit" else None)
    inference_pb2_grpc.add_InferenceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if "batch" in flags:
        from millibatch.service.grpc_poller import schedule_poller

        schedule_poller("batch")
    if mode == "grpc-limit":
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        held = asyncio.ensure_future(inference_pb2_grpc.InferenceStub(channel).Embed(pb.EmbedRequest()))
        await asyncio.sleep(0.5)
        assert not held.done(), "the held call ended"
    print(f"millibatch serving on port {port}", flush=True)
    await server.wait_for_termination()


async def serve(model: Path, port: int, mode: str, flags: Collection[str] = (), http_port: int = 0) -> None:
    """The real server on `port` (and its HTTP door on `http_port`, if not 0), its engine replaced (ok) or
    its queue made endless (refused); or gRPC's floor (grpc-echo, grpc-refuse); with `flags` (SUFFIXES)."""
    if "busy" in flags:
        start_busy_engine(model, "idle" if "idle" in flags else "nice")
    if "pace" in flags:
        start_pacer()
    if mode.startswith("grpc-"):
        return await serve_floor(port, mode, flags)
    from millibatch.service.server import InferenceServer
    from millibatch.settings import load_settings

    settings = load_settings({"models": [str(model)], "host": "127.0.0.1", "port": port, "metrics_port": 0,
                              "http_port": http_port, "profile_on_start": False, "log_level": "warning",
                              **({"refuse_unread": "unread" in flags} if {"unread", "read"} & set(flags) else {}),
                              **({"grpc_poller_policy": policy} if (policy := poller_policy(flags)) else {})})
    server = InferenceServer(settings)
    await server.start()
    for served in server.registry.models.values():
        if mode == "ok":
            served.batcher.engine = NullEngine(served.engine, served.manifest.dimensions)
        else:  # every call's predicted wait outlasts its deadline: refused at the door
            served.batcher.admission.queued_seconds = 1e9
    print(f"millibatch serving on port {server.port}", flush=True)
    await asyncio.Event().wait()


def busy_thread(server: Any) -> int:
    """The busy engine thread's id, as the server printed it to its log."""
    for _ in range(100):
        for line in server.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("busy engine thread "):
                return int(line.split()[-1])
        time.sleep(0.1)
    raise RuntimeError(f"the server did not report its busy engine thread ({server.log_path})")


def thread_cpu(pid: int, tid: int) -> float:
    """CPU seconds (user + system) of one thread of a process."""
    import psutil

    thread = next(t for t in psutil.Process(pid).threads() if t.id == tid)
    return float(thread.user_time + thread.system_time)


def measure(mode: str, model: Path, texts: Path, concurrency: int, duration: float, raw: Path,
            repo: Path = ROOT, rate: float = 0.0) -> dict[str, Any]:
    """Start the server in `mode` (from the checkout `repo`), load it closed-loop (or with Poisson arrivals
    at `rate` calls/s), and read its CPU over the measured phase."""
    cores = cores_for("split")
    port = free_port()
    door = next((DOORS[flag] for flag in suffixes(mode) if flag in DOORS), None)
    # The server runs the mode without its door (a baseline's bench.frontend need not know the doors);
    # the HTTP door is asked for by port.
    served = "+".join(part for part in mode.split("+") if part not in DOORS)
    command = [sys.executable, "-m", "bench.frontend", "serve", "--mode", served, "--model", str(model),
               "--port", str(port)]
    target = f"127.0.0.1:{port}"
    if "http" in suffixes(mode):
        http_port = free_port()
        command += ["--http-port", str(http_port)]
        target = f"127.0.0.1:{http_port}"
    spec = Launch(f"frontend-{mode}", command, door.protocol if door else "millibatch", target, cwd=repo,
                  loadgen_flags=["--model", Manifest.load(model).name] if door else [])
    server = start_server(spec, cores, raw)
    try:
        wait_ready(server, cores, texts, 120) if base_mode(mode) in ("ok", "grpc-echo") else time.sleep(8)
        closed = ["--mode", "closed", "--concurrency", str(concurrency)]
        load = ["--mode", "open", "--rate", str(rate)] if rate else closed
        flags = [*load, "--warmup", "1", "--timeout", "5"]
        run_loadgen(spec, cores, texts, [*flags, "--duration", "1"], None, 60)
        busy = busy_thread(server) if "busy" in suffixes(mode) else None
        engine_before = thread_cpu(server.process.pid, busy) if busy else 0.0
        cpu_before, wall_before = process_cpu(server.process.pid), time.perf_counter()
        result = run_loadgen(spec, cores, texts, [*flags, "--warmup", "0", "--duration", str(duration)],
                             raw / f"{mode}{'' if repo == ROOT else '@' + repo.name}.json", duration + 60)
        wall = time.perf_counter() - wall_before
        engine_cpu = (thread_cpu(server.process.pid, busy) - engine_before) / wall if busy else 0.0
        # The front end's CPU: the busy engine thread's own is counted apart.
        server_cpu = (process_cpu(server.process.pid) - cpu_before) / wall - engine_cpu
    finally:
        server.stop()
    assert result is not None
    calls = result["requests"] / result["duration_s"]
    answers = base_mode(mode) in ("ok", "grpc-echo")
    refused_kind = door.refused if door else "RESOURCE_EXHAUSTED"
    wrong = result["requests"] - (result["ok"] if answers else result["error_kinds"].get(refused_kind, 0))
    return {"mode": mode, "calls_per_s": calls, "server_cpu_cores": server_cpu,
            "calls_per_server_core": calls / server_cpu if server_cpu else 0.0,
            "server_us_per_call": server_cpu / calls * 1e6 if calls else 0.0,
            "engine_cpu_cores": engine_cpu,
            # How soon a refused caller hears it (0 where nothing was refused).
            "refusal_p99_ms": result["error_p99_ms"].get(refused_kind, 0.0),
            "client_cpu_cores": result["client_cpu_cores"], "p50_ms": result["p50_ms"],
            "unexpected_statuses": wrong, "error_kinds": result["error_kinds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.frontend", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "serve"))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--mode", default="ok", help=f"serve: which server to run: one of {', '.join(MODES)}, "
                                                     f"each optionally with +{' +'.join(SUFFIXES)}")
    parser.add_argument("--port", type=int, default=0, help="serve: port")
    parser.add_argument("--http-port", type=int, default=0, help="serve: the real server's HTTP door (0: off)")
    parser.add_argument("--modes", default=",".join(MODES), help="run: modes to measure, alternating")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="Poisson arrivals at this many calls/s instead of the closed loop: each call then "
                             "meets an idle server, as under open-loop overload")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--baseline", action="append", default=[], metavar="REF",
                        help="also measure the real server's modes (ok, refused) as built at git REF, as mode@REF, "
                             "alternating with this build's in each round")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from millibatch.settings import apply_grpc_experiments, load_settings

        mode, flags = base_mode(args.mode), suffixes(args.mode)
        if mode not in MODES or not flags <= set(SUFFIXES):
            parser.error(f"unknown mode {args.mode!r}")
        # gRPC set up as `millibatch serve` sets it up, for the floors too; before grpc is first imported.
        apply_grpc_experiments(load_settings({"grpc_event_engine": "ee" in flags}))
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(args.model, args.port, mode, flags, args.http_port))
        else:
            uvloop.run(serve(args.model, args.port, mode, flags, args.http_port))
        return 0
    plain = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in plain:
        if suffixes(mode) & set(DOORS) and base_mode(mode) not in ("ok", "refused"):
            parser.error(f"{mode}: the doors (+{' +'.join(DOORS)}) are the real server's (ok, refused)")
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    texts = raw / "texts-sts.json"
    texts.write_text(json.dumps(stsb_sentences(DEFAULT_STSB)), encoding="utf-8")
    with checkouts(args.baseline, "frontend-") as builds:
        # (label, mode, checkout): each real-server mode of a baseline runs right after this build's (its
        # suffixes need a baseline whose bench.frontend knows them: `+busy` since cfabfca).
        plan = [(mode, mode, ROOT) for mode in plain]
        for ref, path in builds.items():
            # The HTTP door needs the baseline's bench.frontend to open it (`--http-port`, since edb998f).
            http = "--http-port" in (path / "bench" / "frontend.py").read_text(encoding="utf-8")
            plan += [(f"{mode}@{ref}", mode, path) for mode in plain
                     if mode.partition("+")[0] in ("ok", "refused") and (http or "http" not in suffixes(mode))]
        plan.sort(key=lambda entry: plain.index(entry[1]))
        modes = [label for label, _, _ in plan]
        runs = []
        for round_ in range(1, args.rounds + 1):
            for label, mode, repo in plan:
                run = measure(mode, args.model.resolve(), texts, args.concurrency, args.duration, raw, repo,
                              args.rate)
                run.update(round=round_, mode=label)
                runs.append(run)
                print(f"round {round_} {label:>8}: {run['calls_per_s']:7.0f} calls/s, server "
                      f"{run['server_cpu_cores']:.2f} cores = {run['calls_per_server_core']:6.0f} calls/s per core, "
                      f"{run['server_us_per_call']:5.0f} µs per call, engine {run['engine_cpu_cores']:.2f} cores, "
                      f"refusal p99 {run['refusal_p99_ms']:.2f} ms, "
                      f"client {run['client_cpu_cores']:.2f} cores, "
                      f"unexpected statuses {run['unexpected_statuses']}", flush=True)
    when = stamp()
    load_words = (f"Poisson arrivals at {args.rate:g} calls/s" if args.rate
                  else f"closed loop of {args.concurrency} calls in flight")
    lines = [f"# Front-end ceiling ({when})", "",
             f"`.venv/bin/python -m bench.frontend {' '.join(argv if argv is not None else sys.argv[1:])}`: "
             f"server on one core, {load_words} on the other, one STS-B "
             f"sentence per call (Embed; `+v2` ModelInfer with tritonclient, `+http` the OpenAI HTTP door), "
             f"{args.duration:g} s per round; medians over {args.rounds} rounds.", "",
             "| mode | calls/s per server core | server µs per call | busy engine (cores) | refusal p99 ms "
             "| client CPU (cores) |", "|---|---|---|---|---|---|"]
    summary = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {key: statistics.median(r[key] for r in mine)
                         for key in ("calls_per_server_core", "server_us_per_call", "engine_cpu_cores",
                                     "refusal_p99_ms", "client_cpu_cores")}
        lines.append(f"| {mode} | {summary[mode]['calls_per_server_core']:.0f} | "
                     f"{summary[mode]['server_us_per_call']:.0f} | {summary[mode]['engine_cpu_cores']:.2f} | "
                     f"{summary[mode]['refusal_p99_ms']:.2f} | {summary[mode]['client_cpu_cores']:.2f} |")
    publish(args.out, {"runs": runs, "medians": summary}, lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
