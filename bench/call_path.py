"""What one call costs on top of the engine, and where that time goes.

    .venv/bin/python -m bench.call_path                         # the default engine set-up, 400 pairs
    .venv/bin/python -m bench.call_path --variants "spin-off=--cpu-spinning off" "default="
    .venv/bin/python -m bench.call_path --block 1                # served and bare alternate call by call
    .venv/bin/python -m bench.call_path --doors grpc,http       # Embed and the OpenAI HTTP door
    .venv/bin/python -m bench.call_path --baseline 7ae630e      # each variant of this build and of another

Sequential Embed calls carry one 15-token text to `millibatch serve --instances 1
--threads-per-instance 2` (plus each variant's flags), a separate process on the same machine. They are
interleaved, in blocks of BLOCK calls, with the same text run through `tokenizers` and a plain ONNX
Runtime session with the same thread count and ONNX Runtime's default options on the same model.onnx, in
this process: the bare engine. Served p50 minus bare p50 is what serving adds to a call. The response's own timing
fields split the served call into: gRPC (client, HTTP/2 and the server's gRPC machinery: the round
trip minus the handler's time), tokenize, the hop to an engine thread (admission, dispatcher, collate,
thread wake-up: submit to engine start), the engine, and the rest of the handler (decoding, the return
to the event loop, building the response). Each p50 is also given *settled*, without the first SETTLE
calls of every block: the bare session's threads go on spinning after its block and slow the server's
next calls on the same cores, which a server's own callers would not meet. With `--baseline REF`, every
variant also runs from a checkout of REF (as VARIANT@REF), right after this build's, round by round: the
way to measure a change to the request path beside the build before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.frontend import ECHO_WAIT_SECONDS
from bench.processes import ROOT, Launch, checkouts, free_port, running_server, serve_launch
from bench.stats import percentile, publish, stamp

DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
DEFAULT_OUT = ROOT / "bench" / "results" / "call_path"
#: 15 tokens with [CLS] and [SEP] for the MiniLM (BERT uncased) tokenizer; checked at start.
TEXT = "A man is playing a guitar on the stage in the park."
TOKENS = 15
BASE_FLAGS = ["--instances", "1", "--threads-per-instance", "2", "--log-level", "warning"]
#: Served and bare calls alternate in blocks of this many. A bare run's ONNX Runtime threads spin on after
#: it (its default), and the call right after it pays for that: a bare gRPC round trip took 0.74-0.78 ms
#: just after a bare run against 0.41-0.46 ms alone. Blocks keep that off all but a block's first call.
BLOCK = 20
#: Calls at the start of each block left out of the settled figures. ONNX Runtime's default threads in
#: this process go on spinning after a block of bare runs, and slow the server's next calls on the same
#: cores (2026-11-28, by hand: the first served call after a bare block took 12.8 ms at p50, the fourth
#: 5.4 ms, against 3.8 ms after served calls); a server's own callers do not run a spinning session
#: beside it.
SETTLE = 5


class BareEngine:
    """tokenizers + a plain ONNX Runtime session: `threads` intra-op threads, every other option default."""

    def __init__(self, model: Path, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
        self.session = ort.InferenceSession(str(model / manifest.get("onnx_file", "model.onnx")), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()][:1]

    def tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def __call__(self, text: str) -> None:
        encoding = self.tokenizer.encode(text)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.asarray([encoding.type_ids], dtype=np.int64)}
        self.session.run(self.outputs, {name: feeds[name] for name in self.inputs})


class HttpEmbed:
    """One text's embedding through the OpenAI HTTP door, on one kept-alive connection (a plain HTTP/1.1
    client, so that the client's own cost stays small, as grpc's synchronous stub's does)."""

    def __init__(self, port: int, model: str) -> None:
        import http.client

        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self._body = json.dumps({"model": model, "input": [TEXT]})
        self._headers = {"Content-Type": "application/json", "X-Request-Timeout": "5"}

    def __call__(self) -> None:
        self._connection.request("POST", "/v1/embeddings", self._body, self._headers)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")

    def close(self) -> None:
        self._connection.close()


def measure(name: str, flags: list[str], model: Path, bare: BareEngine, calls: int, texts: Path,
            gap: float, block: int = 1, door: str = "grpc", settle: int = SETTLE,
            repo: Path = ROOT) -> dict[str, Any]:
    """Served and bare calls against one server started with `flags` from the checkout at `repo`,
    interleaved in blocks of `block`, the served ones through `door` (grpc: Embed; http: the OpenAI HTTP
    door, which reports no stages).
    The p50s are over every call and, `settled`, over all but the first `settle` calls of each block."""
    import grpc

    from millibatch.engines.model_dir import Manifest
    from millibatch.v1 import inference_pb2 as pb
    from millibatch.v1 import inference_pb2_grpc

    http_port = free_port()
    spec = serve_launch(model, [*BASE_FLAGS, *flags], name=name, repo=repo,
                        env={"MILLIBATCH_HTTP_PORT": str(http_port)} if door == "http" else None)
    # Seconds per call, and whether it came after the first `settle` of its block (past the other path's wake).
    timed: dict[str, list[tuple[float, bool]]] = {"served": [], "bare": []}
    stages: dict[str, list[float]] = {k: [] for k in ("tokenize", "hop", "engine", "handler_rest", "grpc")}
    with running_server(spec, texts), grpc.insecure_channel(spec.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = pb.EmbedRequest(inputs=[TEXT], truncate=True)
        http = HttpEmbed(http_port, Manifest.load(model).name) if door == "http" else None
        for _ in range(50):  # warm both paths up
            stub.Embed(request, timeout=5) if http is None else http()
            bare(TEXT)
        for i in range(0, calls, block):
            # Blocks of `block` calls each, served first in every other block (block 1: call by call).
            count = min(block, calls - i)
            order = ["served"] * count + ["bare"] * count
            if (i // block) % 2:
                order.reverse()
            position = {"served": 0, "bare": 0}
            for which in order:
                # Back to back by default: on this VM an idle gap lets the cores fall asleep, and every
                # thread hand-off of the served path then pays the wake-up (both sides slow down).
                if gap:
                    time.sleep(gap)
                settled = position[which] >= settle
                position[which] += 1
                started = time.perf_counter()
                response = None
                if which == "bare":
                    bare(TEXT)
                elif http is not None:
                    http()
                else:
                    response = stub.Embed(request, timeout=5)
                elapsed = time.perf_counter() - started
                timed[which].append((elapsed, settled))
                # The stages: of Embed's settled calls, where there are any.
                if response is None or (not settled and block > settle):
                    continue
                t = response.timing
                handler = t.total_us / 1e6
                stages["tokenize"].append(t.tokenize_us / 1e6)
                stages["hop"].append(t.queue_us / 1e6)
                stages["engine"].append(t.inference_us / 1e6)
                stages["handler_rest"].append(max(0.0, handler - (t.tokenize_us + t.queue_us + t.inference_us) / 1e6))
                stages["grpc"].append(max(0.0, elapsed - handler))
        if http is not None:
            http.close()
    ms = 1e3

    def p50(which: str, settled_only: bool = False) -> float:
        chosen = [seconds for seconds, settled in timed[which] if settled or not settled_only]
        return percentile(chosen, 50) * ms if chosen else float("nan")

    served = [seconds for seconds, _ in timed["served"]]
    plain = [seconds for seconds, _ in timed["bare"]]
    served_p50, bare_p50 = p50("served"), p50("bare")
    settled_served_p50, settled_bare_p50 = p50("served", True), p50("bare", True)
    return {"variant": name, "door": door, "flags": flags, "calls": calls, "settle": settle,
            "settled_served_p50_ms": settled_served_p50, "settled_bare_p50_ms": settled_bare_p50,
            "settled_added_p50_ms": settled_served_p50 - settled_bare_p50,
            "served_p50_ms": served_p50, "served_p99_ms": percentile(served, 99) * ms,
            "bare_p50_ms": bare_p50, "bare_p99_ms": percentile(plain, 99) * ms, "added_p50_ms": served_p50 - bare_p50,
            "stages_p50_ms": {k: statistics.median(v) * ms if v else None for k, v in stages.items()}}


def transport_floor(calls: int, texts: Path, bare: BareEngine | None = None, mode: str = "grpc-echo") -> float:
    """p50 round trip (ms) of the same Embed call to a bare grpc.aio server that answers a fixed 384-float
    vector and does nothing else (bench/frontend.py's grpc-echo): what gRPC alone costs here. With `bare`,
    each call comes right after a bare-engine run, as a served call does when interleaved call by call.
    With mode grpc-echo-wait the handler first waits for a worker thread, as for an engine, and the p50 is
    of the round trip outside the handler's own time (which it reports)."""
    import grpc

    from millibatch.v1 import inference_pb2 as pb
    from millibatch.v1 import inference_pb2_grpc

    port = free_port()
    spec = Launch(mode, [sys.executable, "-m", "bench.frontend", "serve", "--mode", mode, "--port", str(port)],
                  "millibatch", f"127.0.0.1:{port}")
    times = []
    with running_server(spec, texts), grpc.insecure_channel(spec.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = pb.EmbedRequest(inputs=[TEXT], truncate=True)
        for i in range(calls + 50):
            if bare is not None:
                bare(TEXT)
            started = time.perf_counter()
            response = stub.Embed(request, timeout=5)
            if i >= 50:
                times.append(time.perf_counter() - started - response.timing.total_us / 1e6)
    return percentile(times, 50) * 1e3


Variant = tuple[str, list[str], str, Path]  # name, extra serve flags, door, checkout


def builds(variants: list[str], doors: list[str], trees: dict[str, Path]) -> list[Variant]:
    """Every NAME=FLAGS variant through every door (VARIANT@DOOR beyond the first), from this checkout
    and then from each baseline's (…@REF), in the order each round runs them."""
    plain = [(f"{v.partition('=')[0]}{'' if door == doors[0] else '@' + door}", v.partition("=")[2].split(), door)
             for v in variants for door in doors]
    return [(name if ref is None else f"{name}@{ref}", flags, door, repo)
            for name, flags, door in plain
            for ref, repo in [(None, ROOT), *trees.items()]]


def measure_rounds(args: argparse.Namespace, model: Path, bare: BareEngine, texts: Path, doors: list[str],
                   trees: dict[str, Path]) -> list[dict[str, Any]]:
    """Every variant of every build, round after round (A B A B …), each printed as it ends."""
    runs = []
    for round_ in range(1, args.rounds + 1):
        for name, flags, door, repo in builds(args.variants, doors, trees):
            run = measure(name, flags, model, bare, args.calls, texts, args.gap_ms / 1000, args.block, door,
                          args.settle, repo)
            run["round"] = round_
            runs.append(run)
            s = run["stages_p50_ms"]
            split = (f"gRPC {s['grpc']:.2f}, tokenize {s['tokenize']:.3f}, hop {s['hop']:.3f}, "
                     f"engine {s['engine']:.2f}, rest of handler {s['handler_rest']:.3f}" if door == "grpc"
                     else "the HTTP door reports no stages")
            print(f"round {round_} {name:>12}: served p50 {run['served_p50_ms']:.2f} ms "
                  f"(p99 {run['served_p99_ms']:.2f}), bare p50 {run['bare_p50_ms']:.2f} ms -> "
                  f"added {run['added_p50_ms']:+.2f} ms; settled: served {run['settled_served_p50_ms']:.2f}, bare "
                  f"{run['settled_bare_p50_ms']:.2f} -> added {run['settled_added_p50_ms']:+.2f} ms | {split}",
                  flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.call_path", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--calls", type=int, default=400, help="served/bare pairs per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the variants (A B A B ...)")
    parser.add_argument("--variants", nargs="*", default=["default="], metavar="NAME=FLAGS",
                        help="server variants: a name and extra `millibatch serve` flags")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="idle time before each call")
    parser.add_argument("--block", type=int, default=BLOCK,
                        help="served and bare calls alternate in blocks of this many (1: call by call)")
    parser.add_argument("--settle", type=int, default=SETTLE,
                        help="calls at the start of each block left out of the settled p50s and the stages")
    parser.add_argument("--doors", default="grpc",
                        help="comma-separated: grpc (Embed), http (the OpenAI HTTP door); each variant through "
                             "each door, alternating, as VARIANT@DOOR beyond the first")
    parser.add_argument("--baseline", action="append", default=[], metavar="REF",
                        help="also run every variant from a checkout of this git ref (repeatable), as VARIANT@REF")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    doors = [d.strip() for d in args.doors.split(",") if d.strip()]
    if not doors or set(doors) - {"grpc", "http"}:
        parser.error(f"--doors {args.doors!r}: choose from grpc, http")
    model = args.model.resolve()
    bare = BareEngine(model, threads=2)
    if bare.tokens(TEXT) != TOKENS:
        raise SystemExit(f"the probe text is {bare.tokens(TEXT)} tokens, not {TOKENS}, for this tokenizer")
    args.out.mkdir(parents=True, exist_ok=True)
    texts = args.out / "probe-texts.json"
    texts.write_text(json.dumps([TEXT]), encoding="utf-8")
    with checkouts(args.baseline, "call-path-") as trees:
        runs = measure_rounds(args, model, bare, texts, doors, trees)
    variants = builds(args.variants, doors, trees)
    floor = transport_floor(args.calls, texts)
    floor_after_bare = transport_floor(args.calls, texts, bare)
    floor_waiting = transport_floor(args.calls, texts, mode="grpc-echo-wait")
    print(f"gRPC alone (bare grpc.aio echo server, same call): p50 {floor:.2f} ms; right after a bare-engine "
          f"run: {floor_after_bare:.2f} ms; around a handler that waits {ECHO_WAIT_SECONDS * 1e3:g} ms for a "
          f"thread: {floor_waiting:.2f} ms", flush=True)
    when = stamp()
    lines = [f"# One call on top of the engine ({when})", "",
             f"`.venv/bin/python -m bench.call_path {' '.join(argv if argv is not None else sys.argv[1:])}`: "
             f"one {TOKENS}-token text, `millibatch serve {' '.join(BASE_FLAGS[:4])}` plus the variant's flags, "
             f"{args.calls} served calls interleaved with {args.calls} bare-engine runs (tokenizers + ONNX "
             f"Runtime, 2 threads, default options) per round in blocks of {args.block}, {args.gap_ms:g} ms idle "
             f"before each; medians of the rounds' p50s, in ms. *Settled*: without the first {args.settle} calls "
             f"of each block, which run in the other path's wake (ONNX Runtime's default threads of the bare "
             f"session go on spinning after its block); the stages are of the settled served calls.", "",
             "| variant | served p50 | bare p50 | added | settled: served p50 | bare p50 | added | gRPC | tokenize "
             "| hop to engine | engine | rest of handler |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, _flags, door, _repo in variants:
        mine = [r for r in runs if r["variant"] == name]

        def med(key: str, runs: list[dict[str, Any]] = mine) -> float:
            return statistics.median(r[key] for r in runs)

        def stage(key: str, digits: int, runs: list[dict[str, Any]] = mine, door: str = door) -> str:
            if door != "grpc":
                return "-"
            return f"{statistics.median(r['stages_p50_ms'][key] for r in runs):.{digits}f}"

        lines.append(f"| {name} | {med('served_p50_ms'):.2f} | {med('bare_p50_ms'):.2f} | "
                     f"{med('added_p50_ms'):+.2f} | {med('settled_served_p50_ms'):.2f} | "
                     f"{med('settled_bare_p50_ms'):.2f} | {med('settled_added_p50_ms'):+.2f} | "
                     f"{stage('grpc', 2)} | {stage('tokenize', 3)} | "
                     f"{stage('hop', 3)} | {stage('engine', 2)} | {stage('handler_rest', 3)} |")
    lines += ["", f"gRPC alone: the same call to a bare grpc.aio server that answers a fixed 384-float vector "
                  f"(`bench/frontend.py`'s grpc-echo) took p50 {floor:.2f} ms, and {floor_after_bare:.2f} ms right "
                  f"after a bare-engine run (whose threads go on spinning for a while, ONNX Runtime's default). "
                  f"Around a handler that first waits {ECHO_WAIT_SECONDS * 1e3:g} ms for a worker thread, as a served "
                  f"call waits for the engine (grpc-echo-wait), the round trip outside the handler took p50 "
                  f"{floor_waiting:.2f} ms."]
    publish(args.out, {"runs": runs, "grpc_echo_p50_ms": floor, "grpc_echo_after_bare_p50_ms": floor_after_bare,
                       "grpc_echo_wait_outside_p50_ms": floor_waiting, "block": args.block, "settle": args.settle},
            lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
