"""Load generator, run as its own process: closed loop (N workers) or open loop (Poisson arrivals).

One request carries one text, as an online caller sends it. Latency of an open-loop request counts from
its scheduled arrival, so a server that falls behind is charged for the queueing it causes. The process
reports its own CPU use (cores) so a saturated client is visible next to the numbers it produced.
Every benchmark that puts gRPC load on a server runs this process (through bench.processes.run_loadgen).

    python -m bench.loadgen --protocol millibatch --target 127.0.0.1:50051 --texts texts.json \
        --mode closed --concurrency 32 --duration 10 --out result.json [--records calls.json]

`--texts` is a JSON list: a benchmark's text set, a mixed-length workload, or a single fixed text.
`--records` also writes every measured call as [status, milliseconds from sending], status "OK" or the
error's kind, for benchmarks that break latency down by status.

Only the standard library and numpy are imported at the top: each protocol's client library is imported
when chosen, so the Triton driver can run from the Triton virtual environment. `openai-node-client` runs the
official OpenAI Node SDK in a Node process of its own (bench/node/openai_load.mjs) and summarizes its calls here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bench import stats

#: The official OpenAI Node SDK, driven by bench/node/openai_load.mjs in its own Node process.
NODE_PROTOCOL = "openai-node-client"
PROTOCOLS = ("http", "millibatch", "openai", "openai-client", NODE_PROTOCOL, "triton-ids", "triton-text")
NODE_SCRIPT = Path(__file__).resolve().parent / "node" / "openai_load.mjs"
#: The failure kind of a call refused by the client's own throttle (--throttle), never sent.
THROTTLED = "throttled"


class Driver(Protocol):
    """Sends one text and returns when the answer is in; raises on any error."""

    async def call(self, text: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Result:
    """What one load phase measured; latencies are of successful requests only."""

    protocol: str
    mode: str
    concurrency: int
    offered_rps: float
    duration_s: float
    requests: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    throughput_rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    client_cpu_cores: float = 0.0
    #: OK answers that came later than --timeout after the call was sent (a server that answers after the
    #: caller's deadline); the client library normally turns those into DEADLINE_EXCEEDED itself.
    late_ok: int = 0
    #: OK answers within --timeout of sending, per second: what the callers could use.
    goodput_rps: float = 0.0
    #: p99 over every call with failures counted as infinitely slow (MLPerf's server-scenario view); None
    #: when more than 1% failed.
    p99_all_ms: float | None = None
    #: p99 time to each failure kind, from sending: how soon a refused caller hears it.
    error_p99_ms: dict[str, float] = field(default_factory=dict)
    #: p99 of how late the client sent a call after its scheduled arrival (a saturated client shows here).
    send_lag_p99_ms: float = 0.0
    #: Mean characters per text sent, and per text answered OK in time (0 without any).
    mean_chars_sent: float = 0.0
    mean_chars_ok: float = 0.0
    #: The client's own garbage-collection pauses during the phase: how many, and the longest (ms). A pause
    #: holds every answer that arrives meanwhile, so it shows in the latencies the client measures.
    client_gc_pauses: int = 0
    client_gc_max_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


class HttpDriver:
    """POST {"inputs": [text]} to <target>/embed (the FastAPI peers); with `model`, an OpenAI embeddings
    request to <target>/v1/embeddings instead (millibatch's HTTP door), the deadline in X-Request-Timeout:
    a plain HTTP client's way (OpenAiClientDriver is the official SDK's)."""

    def __init__(self, target: str, timeout: float, model: str | None = None) -> None:
        import aiohttp

        self._model = model
        self._url = f"http://{target}/embed" if model is None else f"http://{target}/v1/embeddings"
        self._headers = {} if model is None else {"X-Request-Timeout": f"{timeout:.6f}"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                              timeout=aiohttp.ClientTimeout(total=timeout))

    async def call(self, text: str) -> None:
        request = {"inputs": [text]} if self._model is None else {"model": self._model, "input": [text]}
        async with self._session.post(self._url, json=request, headers=self._headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"http-{response.status}")
            if not body:
                raise RuntimeError("empty-body")

    async def close(self) -> None:
        await self._session.close()


class OpenAiClientDriver:
    """The official `openai` client (AsyncOpenAI) against <target>/v1, as its users call it: `timeout` per
    attempt and `retries` retries (the client's default is 2; it retries 429s, 5xx and its own timeouts,
    honouring retry-after-ms). It tells the server nothing but what it sends by itself."""

    def __init__(self, target: str, timeout: float, model: str, retries: int) -> None:
        import openai

        self._openai = openai
        self._model = model
        self._client = openai.AsyncOpenAI(base_url=f"http://{target}/v1", api_key="unused", timeout=timeout,
                                          max_retries=retries)

    async def call(self, text: str) -> None:
        openai = self._openai
        try:
            # truncate: the other peers cut at max_length silently (millibatch's field, in the SDK's extra_body).
            response = await self._client.embeddings.create(model=self._model, input=[text], encoding_format="float",
                                                            extra_body={"truncate": True})
        except openai.APITimeoutError:
            raise TimeoutError("openai client timeout") from None
        except openai.APIStatusError as error:
            raise RuntimeError(f"http-{error.status_code}") from None
        if len(response.data) != 1:
            raise RuntimeError("wrong-count")

    async def close(self) -> None:
        await self._client.close()


class MillibatchDriver:
    """millibatch's gRPC Embed over one channel (or `channels`, taken in turn: one connection each, which
    `serve --workers` needs to spread calls), the call's deadline set to the timeout."""

    def __init__(self, target: str, timeout: float, channels: int = 1, throttle: float | None = None) -> None:
        import grpc

        from millibatch.v1 import inference_pb2, inference_pb2_grpc

        self._pb = inference_pb2
        self._throttle = None
        if throttle is not None:  # one client-side throttle over every channel, as one client process keeps
            from millibatch.throttle import AdaptiveThrottle, throttled_call

            self._throttle, self._throttled_call = AdaptiveThrottle(throttle), throttled_call
        # A distinct option per channel keeps gRPC from sharing one connection between them.
        self._channels = [grpc.aio.insecure_channel(target, options=[("millibatch.loadgen.channel", i)])
                          for i in range(max(1, channels))]
        self._stubs = [inference_pb2_grpc.InferenceStub(channel) for channel in self._channels]
        self._next = 0
        self._timeout = timeout

    async def call(self, text: str) -> None:
        # truncate=True: the other peers cut at max_length silently; refusing long inputs would be less work.
        request = self._pb.EmbedRequest(inputs=[text], truncate=True)
        stub = self._stubs[self._next]
        self._next = (self._next + 1) % len(self._stubs)
        if self._throttle is None:
            response = await stub.Embed(request, timeout=self._timeout)
        else:  # as millibatch's AsyncClient asks its throttle (no interceptor)
            response = await self._throttled_call(self._throttle, stub.Embed, request, timeout=self._timeout)
        if len(response.embeddings) != 1:
            raise RuntimeError("wrong-count")

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def bucket_length(n: int, limit: int) -> int:
    """Pad length for client-side tokens: the next power of two from 16, so Triton can batch equal shapes."""
    length = 16
    while length < n:
        length *= 2
    return min(length, limit)


class TritonDriver:
    """Triton's gRPC front end: token ids tokenized here (`ids`), or raw text tokenized in the server (`text`)."""

    def __init__(self, target: str, timeout: float, model: str, tokenizer: Path | None, max_length: int) -> None:
        import tritonclient.grpc.aio as triton

        self._triton = triton
        self._client = triton.InferenceServerClient(url=target)
        self._model = model
        self._timeout = timeout
        self._max_length = max_length
        self._tokenizer: Any = None
        if tokenizer is not None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(tokenizer))
            self._tokenizer.no_padding()
            self._tokenizer.enable_truncation(max_length)

    def _inputs(self, text: str) -> list[Any]:
        triton = self._triton
        if self._tokenizer is None:
            data = np.array([[text.encode("utf-8")]], dtype=np.object_)
            item = triton.InferInput("text", list(data.shape), "BYTES")
            item.set_data_from_numpy(data)
            return [item]
        ids = self._tokenizer.encode(text).ids
        length = bucket_length(len(ids), self._max_length)
        arrays = {"input_ids": np.zeros((1, length), np.int64), "attention_mask": np.zeros((1, length), np.int64),
                  "token_type_ids": np.zeros((1, length), np.int64)}
        arrays["input_ids"][0, :len(ids)] = ids
        arrays["attention_mask"][0, :len(ids)] = 1
        items = []
        for name, array in arrays.items():
            item = triton.InferInput(name, list(array.shape), "INT64")
            item.set_data_from_numpy(array)
            items.append(item)
        return items

    async def call(self, text: str) -> None:
        outputs = [self._triton.InferRequestedOutput("embeddings")]
        result = await self._client.infer(self._model, self._inputs(text), outputs=outputs,
                                          client_timeout=self._timeout)
        if result.as_numpy("embeddings") is None:
            raise RuntimeError("no-output")

    async def close(self) -> None:
        await self._client.close()


def make_driver(args: argparse.Namespace) -> Driver:
    """The driver for --protocol."""
    if args.protocol == "http":
        return HttpDriver(args.target, args.timeout)
    if args.protocol == "millibatch":
        return MillibatchDriver(args.target, args.timeout, args.channels, args.throttle)
    if args.protocol == "openai":
        return HttpDriver(args.target, args.timeout, args.model)
    if args.protocol == "openai-client":
        return OpenAiClientDriver(args.target, args.timeout, args.model, args.retries)
    tokenizer = args.tokenizer if args.protocol == "triton-ids" else None
    if args.protocol == "triton-ids" and tokenizer is None:
        raise SystemExit("--tokenizer is needed for triton-ids")
    return TritonDriver(args.target, args.timeout, args.model, tokenizer, args.max_length)


def error_kind(error: BaseException) -> str:
    """A short label for an error: the gRPC status name where there is one, else the message or class; a call
    the client's own throttle refused (millibatch.throttle) is "throttled"."""
    if getattr(error, "throttled_by_client", False):
        return THROTTLED
    code = getattr(error, "code", None)
    if callable(code):
        try:
            return str(getattr(code(), "name", code()))
        except Exception:  # some clients' code() needs state they lack; fall back below
            pass
    # tritonclient's InferenceServerException carries the gRPC status as text ("StatusCode.UNAVAILABLE").
    status = getattr(error, "status", None)
    if callable(status):
        try:
            named = str(status() or "")
        except Exception:  # a status it cannot tell: fall back below
            named = ""
        if named:
            return named.rsplit(".", 1)[-1]
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    text = str(error)
    return text if text.startswith("http-") else type(error).__name__


def cpu_seconds() -> float:
    """User + system CPU seconds used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class GcPauses:
    """Times this process's garbage collections while active (a context manager)."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0
        self._started = 0.0

    def _callback(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)


class Recorder:
    """Collects outcomes of the measured phase."""

    def __init__(self, deadline: float = float("inf")) -> None:
        self.deadline = deadline
        #: Seconds from the scheduled send to the answer, OK calls only.
        self.latencies: list[float] = []
        self.late = 0
        #: Failures by kind, calls the client could not send ("client-overflow") included.
        self.errors: Counter[str] = Counter()
        #: Every call sent: (status, seconds from sending to the answer or the error).
        self.calls: list[tuple[str, float]] = []
        self.send_lags: list[float] = []
        #: Characters of the texts sent, and of those answered OK in time: a server that refuses long
        #: texts first under overload answers shorter texts than it is sent.
        self.chars_sent = 0
        self.chars_ok = 0
        #: This process's garbage collections during the phase (the Python drivers only).
        self.gc_pauses = GcPauses()

    async def timed(self, driver: Driver, text: str, started: float) -> None:
        """Run one call; latency counts from `started` (the scheduled send time), lateness from sending."""
        sent = time.perf_counter()
        try:
            await driver.call(text)
        except Exception as error:  # every failure is counted by kind, none stops the run
            self.record(error_kind(error), sent - started, time.perf_counter() - sent, len(text))
            return
        self.record("OK", sent - started, time.perf_counter() - sent, len(text))

    def record(self, status: str, send_lag: float, seconds: float, chars: int) -> None:
        """One call that was sent `send_lag` s after its scheduled time and ended `seconds` after sending,
        "OK" or with the failure kind `status`."""
        self.send_lags.append(send_lag)
        self.chars_sent += chars
        self.calls.append((status, seconds))
        if status != "OK":
            self.errors[status] += 1
            return
        if seconds > self.deadline:
            self.late += 1
        else:
            self.chars_ok += chars
        self.latencies.append(send_lag + seconds)

    def error_times(self) -> dict[str, list[float]]:
        """Seconds from sending to each failure, by kind."""
        found: dict[str, list[float]] = defaultdict(list)
        for status, seconds in self.calls:
            if status != "OK":
                found[status].append(seconds)
        return found


async def closed_loop(driver: Driver, texts: list[str], concurrency: int, duration: float, rng: random.Random,
                      recorder: Recorder | None) -> float:
    """`concurrency` workers, each sending its next request when the last is answered; returns elapsed s."""
    start = time.perf_counter()
    stop_at = start + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            text = texts[rng.randrange(len(texts))]
            if recorder is None:
                with contextlib.suppress(Exception):  # warm-up: errors are neither counted nor fatal
                    await driver.call(text)
            else:
                await recorder.timed(driver, text, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def open_loop(driver: Driver, texts: list[str], rate: float, duration: float, rng: random.Random,
                    recorder: Recorder, max_outstanding: int) -> float:
    """Poisson arrivals at `rate` per second for `duration` s, never waiting for answers; returns elapsed s."""
    start = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    next_at = start
    while True:
        next_at += rng.expovariate(rate)
        if next_at - start >= duration:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_outstanding:
            # The client, not the server, would be the limit past this point: count it, do not hide it.
            recorder.errors["client-overflow"] += 1
            continue
        task = asyncio.create_task(recorder.timed(driver, texts[rng.randrange(len(texts))], next_at))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    return max(duration, time.perf_counter() - start)


def summarize(result: Result, recorder: Recorder, elapsed: float, cpu: float) -> Result:
    """Fill counts, percentiles, throughput and client CPU into `result`."""
    latencies = np.array(recorder.latencies) * 1000.0
    result.ok = len(latencies)
    result.errors = sum(recorder.errors.values())
    result.requests = result.ok + result.errors
    result.error_kinds = dict(recorder.errors)
    result.throughput_rps = result.ok / elapsed if elapsed > 0 else 0.0
    if len(latencies):
        summary = stats.summarize(latencies)
        result.p50_ms, result.p90_ms, result.p99_ms = summary.p50, summary.p90, summary.p99
        result.mean_ms = summary.mean
    result.client_cpu_cores = cpu / elapsed if elapsed > 0 else 0.0
    result.late_ok = recorder.late
    sent_calls, in_time = len(recorder.calls), len(recorder.latencies) - recorder.late
    result.mean_chars_sent = recorder.chars_sent / sent_calls if sent_calls else 0.0
    result.mean_chars_ok = recorder.chars_ok / in_time if in_time else 0.0
    result.goodput_rps = (result.ok - recorder.late) / elapsed if elapsed > 0 else 0.0
    result.p99_all_ms = stats.p99_with_failures(latencies, result.errors)
    result.error_p99_ms = {kind: stats.percentile(np.array(times) * 1000.0, 99)
                           for kind, times in recorder.error_times().items()}
    if recorder.send_lags:
        result.send_lag_p99_ms = stats.percentile(np.array(recorder.send_lags) * 1000.0, 99)
    result.client_gc_pauses = recorder.gc_pauses.count
    result.client_gc_max_ms = recorder.gc_pauses.longest * 1000.0
    result.latencies_ms = [round(float(v), 3) for v in latencies]
    return result


async def probe(driver: Driver, text: str, wait: float) -> None:
    """Retry one request until it succeeds (the peer is up and warm) or `wait` seconds pass."""
    give_up = time.monotonic() + wait
    while True:
        try:
            await driver.call(text)
            return
        except Exception as error:  # not up yet: any error means try again
            if time.monotonic() > give_up:
                raise SystemExit(f"peer not ready after {wait:.0f}s: {error_kind(error)}: {error}") from error
            await asyncio.sleep(0.5)


async def run_python(args: argparse.Namespace) -> tuple[Recorder, float, float] | None:
    """The phase run by this process's driver: its recorder, elapsed s and CPU s; None for a probe."""
    texts: list[str] = args.text_list
    rng = random.Random(args.seed)
    driver = make_driver(args)
    try:
        if args.mode == "probe":
            await probe(driver, texts[0], args.duration)
            return None
        if args.warmup > 0:
            await closed_loop(driver, texts, max(1, min(args.concurrency, 8)), args.warmup, rng, None)
        recorder = Recorder(args.timeout)
        cpu_before = cpu_seconds()
        with recorder.gc_pauses:
            if args.mode == "closed":
                elapsed = await closed_loop(driver, texts, args.concurrency, args.duration, rng, recorder)
            else:
                elapsed = await open_loop(driver, texts, args.rate, args.duration, rng, recorder,
                                          args.max_outstanding)
        return recorder, elapsed, cpu_seconds() - cpu_before
    finally:
        await driver.close()


def node_sdk_installed() -> bool:
    """Whether Node and the OpenAI Node SDK (`npm ci --prefix bench/node`, run by `make tools`) are here."""
    return shutil.which("node") is not None and (NODE_SCRIPT.parent / "node_modules" / "openai").is_dir()


def run_node(args: argparse.Namespace) -> tuple[Recorder, float, float] | None:
    """The phase run by the Node SDK's own process: its calls recorded here, its elapsed s and CPU s."""
    if not node_sdk_installed():
        raise SystemExit(f"the Node SDK is not installed: npm ci --prefix {NODE_SCRIPT.parent}")
    options = {"target": args.target, "model": args.model, "texts": str(args.texts), "mode": args.mode,
               "rate": args.rate, "duration": args.duration, "warmup": args.warmup, "timeout": args.timeout,
               "retries": args.retries, "concurrency": args.concurrency, "maxOutstanding": args.max_outstanding,
               "seed": args.seed, "deadlineHeader": args.deadline_header}
    completed = subprocess.run(["node", str(NODE_SCRIPT), json.dumps(options)], capture_output=True, text=True,
                               check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the Node load generator failed: {completed.stderr.strip()[-2000:]}")
    if args.mode == "probe":
        return None
    report = json.loads(completed.stdout)
    recorder = Recorder(args.timeout)
    for status, send_lag, seconds, chars in report["calls"]:
        recorder.record(status, send_lag, seconds, chars)
    if report["overflow"]:
        recorder.errors["client-overflow"] += report["overflow"]
    return recorder, report["elapsed"], report["cpu"]


async def run(args: argparse.Namespace) -> Result | None:
    """Probe, or warm up then measure one phase (and write its per-call records where asked)."""
    phase = run_node(args) if args.protocol == NODE_PROTOCOL else await run_python(args)
    if phase is None:
        return None
    recorder, elapsed, cpu = phase
    if args.records is not None:
        calls = [[status, round(seconds * 1000.0, 3)] for status, seconds in recorder.calls]
        args.records.write_text(json.dumps(calls), encoding="utf-8")
    result = Result(protocol=args.protocol, mode=args.mode,
                    concurrency=args.concurrency if args.mode == "closed" else 0,
                    offered_rps=args.rate if args.mode == "open" else 0.0, duration_s=elapsed)
    return summarize(result, recorder, elapsed, cpu)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the load generator."""
    parser = argparse.ArgumentParser(prog="bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--target", required=True, help="host:port of the peer")
    parser.add_argument("--model", default="minilm", help="model name (Triton, openai)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (triton-ids tokenizes here)")
    parser.add_argument("--max-length", type=int, default=256, help="truncate client-side tokens to this")
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts")
    parser.add_argument("--mode", choices=("closed", "open", "probe"), default="closed")
    parser.add_argument("--concurrency", type=int, default=1, help="closed loop: requests in flight")
    parser.add_argument("--channels", type=int, default=1,
                        help="millibatch: gRPC channels (connections) the calls take in turn")
    parser.add_argument("--throttle", type=float, default=None, metavar="MULTIPLIER",
                        help="millibatch: throttle calls in the client (millibatch.throttle) with this multiplier")
    parser.add_argument("--retries", type=int, default=2,
                        help="openai-client, openai-node-client: the client's maxRetries (its own default is 2)")
    parser.add_argument("--deadline-header", action="store_true",
                        help="openai-node-client: also send the timeout as X-Request-Timeout (in defaultHeaders), "
                        "as a caller told to would; without it the server is told nothing")
    parser.add_argument("--rate", type=float, default=10.0, help="open loop: mean arrivals per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (probe: seconds to wait)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    parser.add_argument("--max-outstanding", type=int, default=2048, help="open loop: cap on requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here (else stdout)")
    parser.add_argument("--records", type=Path, default=None,
                        help="also write every measured call here: a JSON list of [status, ms from sending]")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one probe or one measured phase."""
    args = build_parser().parse_args(argv)
    args.text_list = json.loads(args.texts.read_text(encoding="utf-8"))
    try:
        import uvloop
    except ImportError:  # the Triton environment may lack it; the plain loop is then used
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    if result is not None:
        text = json.dumps(asdict(result))
        if args.out is not None:
            args.out.write_text(text, encoding="utf-8")
        else:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
