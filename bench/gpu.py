"""GPU benchmark, one run on one GPU: engine latency and throughput per shape, and agreement with ONNX
Runtime on CPU, for every way of running the model (plain ONNX Runtime, millibatch's IO-binding engine
with and without CUDA graphs, fp16, QDQ int8, PyTorch fp16); then end to end through `millibatch serve`:
gRPC latency with one call in flight at 16 and 128 tokens, saturation on mixed STS-B sentences, and the
batches the batcher formed there.

    python -m bench.gpu --model all-MiniLM-L6-v2              # converts once into bench/results/raw/
    python -m bench.gpu --model DIR --variants cpu,ort-plain,torch --quick   # harness test without a GPU

Writes gpu-<stamp>.json (raw numbers) and .md (tables) into --out. Variants are compared in one run.
The gRPC load comes from the load generator (bench/loadgen.py) in its own process; its files and the
server logs go to raw/ under --out. bench/gpu_check.sh runs this on a GPU machine with the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_runners import EngineRunner, OrtIoBindingRunner, PlainOrtRunner, Runner, TorchRunner, min_cosine
from bench.processes import Launch, Server, process_cpu, run_loadgen, running_server, serve_launch
from bench.stats import median, percentile
from bench.texts import DEFAULT_STSB, stsb_sentences
from millibatch.engines.base import EngineInputs, FloatArray
from millibatch.engines.model_dir import Manifest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
#: Every variant, in report order. "cpu" is millibatch's CPU engine (the harness test's stand-in).
ALL_VARIANTS = ("ort-plain", "ort-iobind", "ort-cuda-fp32", "ort-cuda-fp32-graphs", "ort-cuda-fp16",
                "ort-cuda-fp16-graphs", "ort-cuda-int8", "torch-fp16", "ort-trt-ep-fp16", "tensorrt", "cpu",
                "torch-cpu")
DEFAULT_VARIANTS = ("ort-plain,ort-iobind,ort-cuda-fp32,ort-cuda-fp32-graphs,ort-cuda-fp16,ort-cuda-fp16-graphs,"
                    "ort-cuda-int8,torch-fp16")
#: Variants also served end to end by default (the others are engine-only).
DEFAULT_SERVED = "ort-cuda-fp32,ort-cuda-fp32-graphs,ort-cuda-fp16,ort-cuda-fp16-graphs"
#: Sentences whose outputs are compared against ONNX Runtime on CPU (fp32).
AGREEMENT_SENTENCES = 64
#: The batcher's default batch_growth_efficiency (millibatch.settings), for the rows it would choose.
GROWTH_EFFICIENCY = 0.9


@dataclass(frozen=True)
class Models:
    """The artefacts the variants run: converted model directories and the Hugging Face checkpoint."""

    fp32: Path
    fp16: Path | None
    int8: Path | None
    checkpoint: Path | None


@dataclass
class Variant:
    """One way to run the model."""

    name: str
    #: "engine" (millibatch's engines.select), "plain" (an InferenceSession), "iobind" (one with ORT's
    #: own IO binding) or "torch".
    kind: str
    model_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    #: `millibatch serve` flags, or None when the server cannot run this variant.
    serve_flags: list[str] | None = None
    #: The variant this one serves again with extra flags (`--serve-also`), whose engine run stands for it.
    base: str = ""


def resolve_model(spec: str, precision: str = "fp32", device: str = "cpu", folder: Path = RESULTS / "raw") -> Path:
    """A model directory; a packaged model name or checkpoint is converted once into `folder`."""
    from millibatch.engines.model_dir import is_model_dir

    path = Path(spec)
    if is_model_dir(path):
        return path
    out = folder / f"{Path(spec).name}-{precision}-{device}"
    if not is_model_dir(out):
        from millibatch.engines.convert.convert import ConvertOptions, convert

        convert(ConvertOptions(source=spec, output=out, force=True, precision=precision,  # type: ignore[arg-type]
                               device=device), progress=lambda _: None)  # type: ignore[arg-type]
    return out


def checkpoint_of(spec: str) -> Path | None:
    """The Hugging Face checkpoint folder of a packaged model name or folder, where there is one."""
    from millibatch.engines.convert.sources import resolve

    try:
        return resolve(spec).path
    except FileNotFoundError:
        return None


def _cuda_ready(providers: list[str]) -> str | None:
    from millibatch.engines import cuda_runtime

    if "CUDAExecutionProvider" not in providers:
        return f"onnxruntime offers only {providers}"
    if cuda_runtime.device_count() == 0:
        return "no CUDA GPU visible (or cuda-python missing)"
    return None


def _torch_cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch sees no CUDA GPU"


def precision_of(variant: str) -> str:
    """The precision a variant's name ends with ("ort-cuda-fp16-graphs" -> "fp16"; others their last word)."""
    return variant.removesuffix("-graphs").rsplit("-", 1)[-1]


def variants(names: list[str], models: Models) -> tuple[list[Variant], dict[str, str]]:
    """The requested variants that can run here, and the others with the reason they cannot."""
    from millibatch.engines.select import onnxruntime_providers

    providers = onnxruntime_providers()
    no_cuda = _cuda_ready(providers)
    cuda_engine = {"engine": "onnxruntime", "device": "cuda"}
    cuda_flags = ["--engine", "onnxruntime", "--device", "cuda"]
    found: list[Variant] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name not in ALL_VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)}")
        graphs = name.endswith("-graphs")
        model = {"fp16": models.fp16, "int8": models.int8}.get(precision_of(name), models.fp32)
        if name == "cpu":
            found.append(Variant(name, "engine", models.fp32, {"device": "cpu"}, ["--device", "cpu"]))
        elif name == "torch-cpu" or name == "torch-fp16":
            why = None if name == "torch-cpu" else _torch_cuda()
            if models.checkpoint is None or why is not None:
                skipped[name] = why or "no Hugging Face checkpoint for this model"
            else:
                found.append(Variant(name, "torch", models.checkpoint,
                                     {"device": "cpu" if name == "torch-cpu" else "cuda"}))
        elif name in ("ort-plain", "ort-iobind"):
            provider = "CPUExecutionProvider" if no_cuda else "CUDAExecutionProvider"
            found.append(Variant(name, "plain" if name == "ort-plain" else "iobind", models.fp32,
                                 {"provider": provider}))
        elif no_cuda is not None:
            skipped[name] = no_cuda
        elif model is None:
            skipped[name] = "no model directory of this precision (--fp16-model / --int8-model)"
        elif name.startswith("ort-cuda"):
            found.append(Variant(name, "engine", model, {**cuda_engine, "cuda_graphs": graphs},
                                 [*cuda_flags, "--cuda-graphs" if graphs else "--no-cuda-graphs"]))
        elif name == "ort-trt-ep-fp16":
            if "TensorrtExecutionProvider" not in providers:
                skipped[name] = f"onnxruntime offers only {providers}"
            else:
                found.append(Variant(name, "engine", models.fp32, {
                    **cuda_engine, "ort_tensorrt_provider": True, "ort_tensorrt_fp16": True,
                    "ort_tensorrt_cache_dir": RESULTS / "raw" / "trt-cache"}))
        elif name == "tensorrt":
            found.append(Variant(name, "engine", models.fp32, {"engine": "tensorrt", "device": "cuda"},
                                 ["--engine", "tensorrt", "--device", "cuda"]))
    return found, skipped


def make_runner(variant: Variant, max_rows: int) -> Runner:
    """Load the variant (raises EngineUnavailable, or whatever its library raises, when it cannot)."""
    if variant.kind in ("plain", "iobind"):
        runner = PlainOrtRunner if variant.kind == "plain" else OrtIoBindingRunner
        return runner(variant.model_dir / Manifest.load(variant.model_dir).onnx_file, variant.options["provider"])
    if variant.kind == "torch":
        return TorchRunner(variant.model_dir, variant.options["device"])
    from millibatch.engines.select import EngineOptions, load_engine

    manifest = Manifest.load(variant.model_dir)
    return EngineRunner(load_engine(variant.model_dir, manifest, EngineOptions(max_rows=max_rows, **variant.options)))


def token_batch(rows: int, tokens: int, padded: int) -> EngineInputs:
    """`rows` rows of `tokens` real tokens each, right-padded to `padded`."""
    ids = np.zeros((rows, padded), dtype=np.int64)
    ids[:, :tokens] = 1000
    ids[:, 0], ids[:, tokens - 1] = 101, 102
    mask = np.zeros_like(ids)
    mask[:, :tokens] = 1
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def sentence_batch(tokenizer_path: Path, sentences: list[str], max_length: int) -> tuple[EngineInputs, int]:
    """The sentences tokenized (truncated to `max_length`) and padded to the longest; and that length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    encoded = tokenizer.encode_batch(sentences)
    longest = max(len(e.ids) for e in encoded)
    ids = np.zeros((len(sentences), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids)), longest


def padded_to(batch: EngineInputs, length: int) -> EngineInputs:
    """`batch` right-padded with zeros to `length` tokens."""
    extra = length - batch.padded_length

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, extra))) if extra > 0 else a

    return EngineInputs(pad(batch.input_ids), pad(batch.attention_mask), pad(batch.token_type_ids))


def time_shape(runner: Runner, rows: int, tokens: int, seconds: float) -> dict[str, Any]:
    """Median/p99 latency and rows/s of one shape (after 3 unmeasured runs)."""
    padded = runner.padded_length(tokens)
    batch = token_batch(rows, tokens, padded)
    for _ in range(3):
        runner.run(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        runner.run(batch)
        times.append(time.perf_counter() - started)
    p50 = median(times)
    return {"rows": rows, "tokens": tokens, "padded_length": padded, "runs": len(times), "p50_ms": p50 * 1e3,
            "p99_ms": percentile(times, 99) * 1e3, "rows_per_s": rows / p50, "tokens_per_s": rows * tokens / p50}


def graph_summary(model_dir: Path) -> dict[str, int]:
    """Nodes in the variant's ONNX graph and how many are fused attention: an unfused graph (one
    onnxruntime 1.30 left) runs several times the kernels and shows it in every GPU figure."""
    import onnx

    from millibatch.engines.convert.optimize import ATTENTION_OPS

    graph = onnx.load(str(model_dir / Manifest.load(model_dir).onnx_file), load_external_data=False).graph
    return {"nodes": len(graph.node), "fused_attention": sum(n.op_type in ATTENTION_OPS for n in graph.node)}


def bench_engine(variant: Variant, shapes: list[tuple[int, int]], seconds: float, max_rows: int,
                 reference: tuple[EngineInputs, FloatArray] | None) -> dict[str, Any]:
    """Each shape's latency and throughput, and the lowest cosine against ORT on CPU over real sentences."""
    started, memory_before = time.perf_counter(), gpu_memory_used()
    try:
        runner = make_runner(variant, max_rows)
    except Exception as exc:  # a variant that cannot load is reported, not fatal
        return {"variant": variant.name, "skipped": f"{type(exc).__name__}: {first_line(exc)}"}
    load_seconds = time.perf_counter() - started
    memory_after = gpu_memory_used()
    try:
        max_length = Manifest.load(variant.model_dir).max_length if variant.kind != "torch" else 512
        result: dict[str, Any] = {"variant": variant.name, "runs": runner.description,
                                  "load_seconds": load_seconds, "shapes": []}
        if memory_before is not None and memory_after is not None:
            # What loading took on the GPU (sessions, buffers, captured graphs), all processes counted.
            result["gpu_memory_mb"] = (memory_after - memory_before) / 2**20
        if variant.kind != "torch":
            result["graph"] = graph_summary(variant.model_dir)
        if reference is not None:
            batch, want = reference
            got = runner.run(padded_to(batch, runner.padded_length(batch.padded_length)))
            result["min_cosine_vs_cpu_fp32"] = min_cosine(got, want)
        for rows, tokens in shapes:
            result["shapes"].append(time_shape(runner, rows, min(tokens, max_length), seconds))
        return result
    finally:
        runner.close()


def gpu_memory_used() -> int | None:
    """Bytes in use on the first GPU (NVML), or None without one."""
    from millibatch.engines.gpu_info import gpu_stats

    stats = gpu_stats()
    return stats[0].memory_used_bytes if stats else None


def cpu_reference(models: Models, stsb: Path) -> tuple[EngineInputs, FloatArray] | None:
    """Real sentences as one batch, and ONNX Runtime's fp32 answer for them on CPU."""
    from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine

    if not stsb.is_file():
        return None
    manifest = Manifest.load(models.fp32)
    sentences = stsb_sentences(stsb)[:AGREEMENT_SENTENCES]
    batch, _ = sentence_batch(models.fp32 / "tokenizer.json", sentences, manifest.max_length)
    engine = OnnxRuntimeCpuEngine(models.fp32 / manifest.onnx_file)
    try:
        return batch, engine.run(batch, 0)[engine.output_names[0]]
    finally:
        engine.close()


def text_with_tokens(tokenizer_path: Path, tokens: int) -> str:
    """A sentence that tokenizes to exactly `tokens` tokens (special tokens included) when possible."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"]
    text = ""
    i = 0
    while len(tokenizer.encode(text).ids) < tokens:
        text = (text + " " + words[i % len(words)]).strip()
        i += 1
    return text


def workers_of(server: Server) -> int:
    """Server processes behind `server`'s port (`serve --workers N`)."""
    command = server.launch.command
    return int(command[command.index("--workers") + 1]) if "--workers" in command else 1


def all_workers_ready(server: Server, texts: Path, out: Path, tries: int = 30) -> None:
    """`serve --workers N` answers once one worker is up: call over every connection until none fails."""
    workers = workers_of(server)
    for _ in range(tries if workers > 1 else 0):
        if closed_loop(server, texts, 4 * workers, 1.0, out)["errors"] == 0:
            return


def closed_loop(server: Server, texts: Path, concurrency: int, seconds: float, out: Path) -> dict[str, Any]:
    """The load generator's closed loop against `server` (30 s call timeout, up to 1 s of warm-up first),
    over one connection, or four per process of `serve --workers N` (which spreads connections, not calls;
    the Models service's figures, mean rows and engine busy, are then one worker's)."""
    workers = workers_of(server)
    channels = 4 * workers if workers > 1 else 1
    flags = ["--mode", "closed", "--concurrency", str(concurrency), "--duration", str(seconds),
             "--warmup", str(min(1.0, seconds)), "--timeout", "30", "--channels", str(channels)]
    result = run_loadgen(server.launch, None, texts, flags, out, seconds + 120)
    assert result is not None
    return result


def batching_snapshot(server: Server) -> dict[str, Any]:
    """The Models service's view of the served model: batches and rows so far, and the cost model."""
    from millibatch.client import Client

    with Client(server.launch.target, timeout=10.0) as client:
        (model,) = client.list_models().models
    return {"batches": model.batching.batches, "rows": model.batching.rows,
            "padded_tokens": model.batching.padded_tokens, "engine_seconds": model.batching.engine_seconds,
            "cost_model": dict(model.cost_model), "engine_reason": model.engine_reason}


def rows_histogram(server: Server) -> dict[str, float]:
    """Cumulative count of batches per `millibatch_batch_rows` bucket bound (Prometheus), by bound."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    assert server.launch.metrics_url is not None
    with urllib.request.urlopen(server.launch.metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "millibatch_batch_rows":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    counts[sample.labels["le"]] = counts.get(sample.labels["le"], 0.0) + sample.value
    return counts


def chosen_rows(cost_model: dict[str, float], lengths: list[int], max_rows: int) -> dict[int, int]:
    """Rows per batch the scheduler's growth rule settles for at each length, from the fitted cost model
    (at most `max_rows`: where rows cost nothing the rule never stops a batch growing)."""
    from millibatch.batching.cost_model import FEATURES, CostModel

    model = CostModel(tuple(cost_model[name] for name in FEATURES))  # type: ignore[arg-type]
    return {length: min(max_rows, model.efficient_rows(length, GROWTH_EFFICIENCY)) for length in lengths}


def mixed_texts(variant: Variant, stsb: Path, raw: Path) -> Path:
    """The saturation texts, written to `raw`: STS-B sentences, or a few fixed ones without the set."""
    mixed = raw / "gpu-stsb-sentences.json"
    mixed.write_text(json.dumps(stsb_sentences(stsb) if stsb.is_file() else
                                [text_with_tokens(variant.model_dir / "tokenizer.json", t) for t in (8, 16, 24, 40)]))
    return mixed


def variant_server(variant: Variant, max_rows: int, name: str, metrics: bool = False) -> Launch:
    """`millibatch serve` running `variant`."""
    return serve_launch(variant.model_dir, ["--max-batch-rows", str(max_rows), *(variant.serve_flags or [])],
                        name=name, metrics=metrics)


def bench_grpc(variant: Variant, seconds: float, concurrency: int, max_rows: int, stsb: Path,
               raw: Path) -> dict[str, Any]:
    """Serve the variant; measure one call in flight at 16 and 128 tokens, then saturation on mixed STS-B
    sentences with the batches formed there. Load generator files and the server log go to `raw`."""
    if variant.serve_flags is None:
        return {"variant": variant.name, "skipped": "the server has no setting that selects this variant"}
    max_length = Manifest.load(variant.model_dir).max_length
    lengths = sorted({min(16, max_length), min(128, max_length)})
    texts: dict[int, Path] = {}
    for tokens in lengths:
        texts[tokens] = raw / f"gpu-{variant.name}-text-{tokens}.json"
        texts[tokens].write_text(json.dumps([text_with_tokens(variant.model_dir / "tokenizer.json", tokens)]))
    mixed = mixed_texts(variant, stsb, raw)
    spec = variant_server(variant, max_rows, f"gpu-{variant.name}", metrics=True)
    with running_server(spec, texts[lengths[0]], logs=raw, wait=300.0) as server:
        all_workers_ready(server, texts[lengths[0]], raw / f"gpu-{variant.name}-ready.json")
        result: dict[str, Any] = {"variant": variant.name, "latency": []}
        for tokens in lengths:
            phase = closed_loop(server, texts[tokens], 1, seconds, raw / f"gpu-{variant.name}-latency-{tokens}.json")
            if phase["errors"]:
                raise RuntimeError(f"{phase['errors']} of {phase['requests']} calls failed: {phase['error_kinds']}")
            result["latency"].append({"tokens": tokens, "requests": phase["ok"], "p50_ms": phase["p50_ms"],
                                      "p99_ms": phase["p99_ms"]})
        before, rows_before = batching_snapshot(server), rows_histogram(server)
        cpu_before, started = process_cpu(server.process.pid), time.perf_counter()
        phase = closed_loop(server, mixed, concurrency, seconds, raw / f"gpu-{variant.name}-saturation.json")
        cpu, wall = process_cpu(server.process.pid) - cpu_before, time.perf_counter() - started
        after, rows_after = batching_snapshot(server), rows_histogram(server)
        batches = after["batches"] - before["batches"]
        rows = after["rows"] - before["rows"]
        # Overload answers RESOURCE_EXHAUSTED: counted as errors, not fatal.
        result["saturation"] = {
            "texts": "STS-B sentences" if stsb.is_file() else "fixed sentences", "concurrency": concurrency,
            "requests_per_s": phase["throughput_rps"], "ok": phase["ok"], "errors": phase["errors"],
            "p50_ms": phase["p50_ms"], "p99_ms": phase["p99_ms"], "client_cpu_cores": phase.get("client_cpu_cores"),
            "batches": batches, "mean_rows": rows / batches if batches else 0.0,
            # Engine seconds (summed over instances) between the two snapshots, warm-up included.
            "engine_busy": (after["engine_seconds"] - before["engine_seconds"]) / wall,
            # The whole server process; one event loop at about 1.0 means the front end is the limit.
            "server_cpu_cores": cpu / wall,
            "rows_histogram": {le: rows_after.get(le, 0.0) - rows_before.get(le, 0.0) for le in rows_after},
        }
        result["cost_model"] = after["cost_model"]
        result["growth_rows"] = chosen_rows(after["cost_model"], [16, 32, 64, 128], max_rows)
        result["engine_reason"] = after["engine_reason"]
        return result


def bench_scale_out(variant: Variant, processes: int, seconds: float, concurrency: int, max_rows: int,
                    stsb: Path, raw: Path) -> dict[str, Any]:
    """Saturation with `processes` servers of the variant sharing the GPU, the calls in flight split evenly
    between them (one load generator each): whether more processes lift the ceiling of one event loop."""
    from concurrent.futures import ThreadPoolExecutor

    mixed = mixed_texts(variant, stsb, raw)
    name = f"{variant.name}-x{processes}p"
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(variant_server(variant, max_rows, f"gpu-{name}-{i}"), mixed,
                                                      logs=raw, wait=300.0)) for i in range(processes)]
        cpu_before, started = [process_cpu(s.process.pid) for s in servers], time.perf_counter()
        with ThreadPoolExecutor(processes) as pool:
            phases = list(pool.map(lambda i: closed_loop(servers[i], mixed, concurrency // processes, seconds,
                                                         raw / f"gpu-{name}-saturation-{i}.json"), range(processes)))
        wall = time.perf_counter() - started
        cpu = sum(process_cpu(s.process.pid) - before for s, before in zip(servers, cpu_before, strict=True))
    return {"variant": variant.name, "processes": processes, "concurrency": concurrency,
            "requests_per_s": sum(p["throughput_rps"] for p in phases), "errors": sum(p["errors"] for p in phases),
            "p50_ms": max(p["p50_ms"] for p in phases), "p99_ms": max(p["p99_ms"] for p in phases),
            "server_cpu_cores": cpu / wall}


def extra_served(specs: list[str], served: list[Variant]) -> tuple[list[Variant], dict[str, str]]:
    """`--serve-also` entries: a served variant of this run served again with extra flags, under its own
    name; and the entries whose variant cannot run here, with why."""
    by_name = {v.name: v for v in served}
    extra: list[Variant] = []
    skipped: dict[str, str] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        base, _, flags = rest.partition(":")
        if not name or base not in ALL_VARIANTS:
            raise SystemExit(f"--serve-also {spec!r}: expected NAME=VARIANT:FLAGS with a variant of {ALL_VARIANTS}")
        if base not in by_name:
            skipped[name] = f"{base} is not served in this run"
            continue
        variant = by_name[base]
        extra.append(Variant(name, variant.kind, variant.model_dir, variant.options,
                             [*(variant.serve_flags or []), *flags.split()], base=base))
    return extra, skipped


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def machine() -> dict[str, Any]:
    """What this ran on: host, GPUs (NVML), library versions, commit."""
    import onnxruntime as ort

    from bench.stats import stamp
    from millibatch.engines.gpu_info import gpu_stats
    from millibatch.engines.tensorrt_engine import tensorrt_version

    gpus = gpu_stats()
    versions: dict[str, str] = {"onnxruntime": ort.__version__}
    for module in ("torch", "numpy", "grpc", "cuda.bindings"):
        with contextlib.suppress(ImportError, AttributeError):
            versions[module] = str(__import__(module, fromlist=["__version__"]).__version__)
    when = stamp()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": when.commit,
            "host": platform.node(), "cpu": when.cpu, "cpu_count": os.cpu_count(),
            "gpus": [g.name for g in gpus] if gpus else [], "versions": versions,
            "providers": ort.get_available_providers(), "tensorrt": tensorrt_version()}


def markdown(report: dict[str, Any]) -> str:
    """Tables for the engine and gRPC results."""
    m = report["machine"]
    lines = [f"# GPU benchmark {m['date']}", "",
             f"GPU: {', '.join(m['gpus']) or 'none'}; CPU: {m['cpu']} ({m['cpu_count']} cores); "
             f"commit {m['commit'] or '?'}; versions: {json.dumps(m['versions'])}", "",
             f"Command: `{report['command']}`", "", "## Engine (one batch, host arrays in, host answer out)", "",
             "| variant | rows × tokens | padded | p50 ms | p99 ms | rows/s | min cosine vs CPU fp32 |",
             "|---|---|---|---|---|---|---|"]
    for entry in report["engine"]:
        if "skipped" in entry:
            lines.append(f"| {entry['variant']} | skipped: {entry['skipped']} ||||||")
            continue
        cosine = entry.get("min_cosine_vs_cpu_fp32")
        for s in entry["shapes"]:
            lines.append(f"| {entry['variant']} | {s['rows']} × {s['tokens']} | {s['padded_length']} "
                         f"| {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['rows_per_s']:.0f} "
                         f"| {'' if cosine is None else f'{cosine:.6f}'} |")
    lines += ["", "What each variant ran:", ""]
    for e in report["engine"]:
        if "runs" in e:
            graph = e.get("graph")
            shape = f"; {graph['nodes']} graph nodes, {graph['fused_attention']} fused attention" if graph else ""
            memory = f"; {e['gpu_memory_mb']:.0f} MiB of GPU memory" if "gpu_memory_mb" in e else ""
            lines.append(f"- {e['variant']}: {e['runs']} (loaded in {e['load_seconds']:.1f} s{shape}{memory})")
    lines += ["", "## End to end through `millibatch serve` (gRPC, client on the same machine)", "",
              "| variant | one call in flight: 16 tok p50 / p99 ms | 128 tok p50 / p99 ms "
              "| saturation calls/s (STS-B, concurrency) | errors | mean rows/batch | rows chosen at 16/32/64/128 "
              "| engine busy | server CPU cores |",
              "|---|---|---|---|---|---|---|---|---|"]
    for entry in report["grpc"]:
        if "skipped" in entry:
            lines.append(f"| {entry['variant']} | skipped: {entry['skipped']} ||||||||")
            continue
        lat = {x["tokens"]: x for x in entry["latency"]}
        cells = [f"{lat[t]['p50_ms']:.2f} / {lat[t]['p99_ms']:.2f}" if t in lat else "" for t in (16, 128)]
        sat = entry["saturation"]
        growth = "/".join(str(entry["growth_rows"][k]) for k in sorted(entry["growth_rows"], key=int))
        lines.append(f"| {entry['variant']} | {cells[0]} | {cells[1]} | {sat['requests_per_s']:.0f} "
                     f"({sat['concurrency']}) | {sat['errors']} | {sat['mean_rows']:.1f} | {growth} "
                     f"| {sat['engine_busy']:.2f} | {sat['server_cpu_cores']:.2f} |")
    if report.get("scale_out"):
        lines += ["", "## More server processes on one GPU (saturation, calls in flight split between them)", "",
                  "| variant | processes | calls/s | errors | p50 ms (worst process) | p99 ms | server CPU cores |",
                  "|---|---|---|---|---|---|---|"]
        for e in report["scale_out"]:
            if "skipped" in e:
                lines.append(f"| {e['variant']} | {e['processes']} | skipped: {e['skipped']} |||||")
            else:
                lines.append(f"| {e['variant']} | {e['processes']} | {e['requests_per_s']:.0f} | {e['errors']} "
                             f"| {e['p50_ms']:.1f} | {e['p99_ms']:.1f} | {e['server_cpu_cores']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON + markdown into --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="fp32 model directory or packaged model name")
    parser.add_argument("--fp16-model", default=None, help="fp16 model directory (default: convert --model)")
    parser.add_argument("--int8-model", default=None, help="QDQ int8 model directory (default: convert --model)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="Hugging Face checkpoint for the PyTorch variants (default: --model's, if packaged)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {','.join(ALL_VARIANTS)}")
    parser.add_argument("--served", default=DEFAULT_SERVED, help="variants also measured through the server")
    parser.add_argument("--serve-also", action="append", default=[], metavar="NAME=VARIANT:FLAGS",
                        help="serve VARIANT once more with extra `millibatch serve` flags, reported as NAME "
                             "(e.g. 'ort-cuda-fp16-x2=ort-cuda-fp16:--instances 2'); repeatable")
    parser.add_argument("--scale-out", action="append", default=[], metavar="VARIANT:PROCESSES",
                        help="saturation again with PROCESSES servers of a served VARIANT on the same GPU; repeatable")
    parser.add_argument("--rows", default="1,32", help="batch rows for the engine benchmark")
    parser.add_argument("--tokens", default="16,128", help="tokens per row for the engine benchmark")
    parser.add_argument("--max-rows", type=int, default=64, help="max_batch_rows for engines and server")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=256, help="calls in flight at saturation")
    parser.add_argument("--stsb", type=Path, default=Path(os.environ.get("MILLIBATCH_STSB", DEFAULT_STSB)),
                        help="STS-B test TSV: sentences for agreement and saturation")
    parser.add_argument("--quick", action="store_true", help="0.3 s per measurement, concurrency 8 (smoke test)")
    parser.add_argument("--no-grpc", action="store_true", help="engine benchmark only")
    parser.add_argument("--convert-dir", type=Path, default=RESULTS / "raw",
                        help="where packaged models and checkpoints are converted (once)")
    parser.add_argument("--convert-only", action="store_true", help="convert the models the variants need, then exit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.concurrency = 0.3, 8
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    needs = {precision_of(v) for v in names}
    folder = args.convert_dir
    models = Models(
        # fp32 too is tuned for CUDA (fused SkipLayerNorm), as `convert --device cuda` makes it for a GPU.
        fp32=resolve_model(args.model, "fp32", "cuda", folder),
        fp16=resolve_model(args.fp16_model or args.model, "fp16", "cuda", folder) if "fp16" in needs else None,
        int8=resolve_model(args.int8_model or args.model, "int8", "cuda", folder) if "int8" in needs else None,
        checkpoint=args.checkpoint or checkpoint_of(args.model),
    )
    if args.convert_only:
        print(json.dumps({k: str(v) for k, v in vars(models).items()}))
        return 0
    shapes = [(int(r), int(t)) for r in args.rows.split(",") for t in args.tokens.split(",")]
    chosen, skipped = variants(names, models)
    served = {v.strip() for v in args.served.split(",")}
    to_serve = [v for v in chosen if v.name in served and v.serve_flags is not None]
    also, also_skipped = extra_served(args.serve_also, to_serve)  # checked before minutes of engine runs
    to_serve += also
    command = " ".join(["python -m bench.gpu", *(argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {"machine": machine(), "command": command,
                              "models": {k: str(v) for k, v in vars(models).items()},
                              "engine": [{"variant": n, "skipped": why} for n, why in skipped.items()],
                              "grpc": [{"variant": n, "skipped": why} for n, why in also_skipped.items()]}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")

    def save() -> None:
        # After every variant: a run cut short by its time limit still leaves what it measured.
        (args.out / f"gpu-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"gpu-{stamp}.md").write_text(markdown(report))

    reference = cpu_reference(models, args.stsb)
    for variant in chosen:
        print(f"engine {variant.name} ...", file=sys.stderr, flush=True)
        report["engine"].append(bench_engine(variant, shapes, args.seconds, args.max_rows, reference))
        save()
    if not args.no_grpc:
        raw = args.out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        runnable = {e["variant"] for e in report["engine"] if "skipped" not in e}
        for variant in to_serve:
            if (variant.base or variant.name) not in runnable:
                report["grpc"].append({"variant": variant.name, "skipped": "engine unavailable (see above)"})
                continue
            print(f"grpc {variant.name} ...", file=sys.stderr, flush=True)
            try:
                report["grpc"].append(bench_grpc(variant, args.seconds, args.concurrency, args.max_rows, args.stsb,
                                                 raw))
            except Exception as exc:  # one variant failing must not lose the others' numbers
                report["grpc"].append({"variant": variant.name, "skipped": f"failed: {first_line(exc)}"})
            save()
        report["scale_out"] = []
        for spec in args.scale_out:
            name, _, count = spec.partition(":")
            base = next((v for v in to_serve if v.name == name and name in runnable), None)
            if base is None:
                report["scale_out"].append({"variant": name, "processes": count, "skipped": "not served here"})
                continue
            print(f"scale-out {spec} ...", file=sys.stderr, flush=True)
            try:
                report["scale_out"].append(bench_scale_out(base, int(count or 2), args.seconds, args.concurrency,
                                                           args.max_rows, args.stsb, raw))
            except Exception as exc:  # reported, not fatal
                failed = f"failed: {first_line(exc)}"
                report["scale_out"].append({"variant": name, "processes": count, "skipped": failed})
            save()
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
