"""GPU benchmark, one run on one GPU: raw engine latency/throughput per shape, then end-to-end gRPC
latency (batch 1; 16 and 128 tokens; tokenized on the server) and saturation throughput, for ONNX
Runtime CUDA fp32/fp16, ONNX Runtime's TensorRT provider (fp16) and native TensorRT when available.

    python -m bench.gpu --model all-MiniLM-L6-v2            # converts once into bench/results/raw/
    python -m bench.gpu --model DIR --variants cpu --quick  # harness smoke test without a GPU

Writes bench/results/gpu-<stamp>.json (raw numbers) and .md (tables). Compares variants in one run.
The gRPC load comes from the load generator (bench/loadgen.py) in its own process; its files and the
server logs go to raw/ under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.processes import Server, run_loadgen, running_server, serve_launch
from bench.stats import median, percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ALL_VARIANTS = ("ort-cuda-fp32", "ort-cuda-fp16", "ort-trt-ep-fp16", "tensorrt", "cpu")


@dataclass
class Variant:
    """One way to run the model: a model directory plus engine options (and server flags for gRPC)."""

    name: str
    model_dir: Path
    options: dict[str, Any]
    #: `millibatch serve` flags, or None when the server cannot select this variant.
    serve_flags: list[str] | None = field(default=None)


def resolve_model(spec: str) -> Path:
    """A model directory; a packaged model name is converted once into bench/results/raw/."""
    from millibatch.engines.model_dir import is_model_dir

    path = Path(spec)
    if is_model_dir(path):
        return path
    out = RESULTS / "raw" / spec
    if not is_model_dir(out):
        from millibatch.engines.convert.convert import ConvertOptions, convert

        convert(ConvertOptions(source=spec, output=out, force=True), progress=lambda _: None)
    return out


def make_fp16_dir(src: Path, dst: Path) -> Path:
    """Copy of `src` with fp16 weights (fp32 inputs/outputs kept), converted by onnxruntime's tool."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from millibatch.engines.model_dir import Manifest

    manifest = Manifest.load(src)
    if dst.exists() and Manifest.load(dst).precision == "fp16":
        return dst
    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(src / manifest.onnx_file)), keep_io_types=True)
    onnx.save(model, str(dst / manifest.onnx_file))
    manifest.precision = "fp16"
    manifest.name = manifest.name + "-fp16"
    manifest.save(dst)
    return dst


def variants(names: list[str], fp32_dir: Path) -> tuple[list[Variant], dict[str, str]]:
    """The requested variants that can run here, and the others with the reason they cannot."""
    from millibatch.engines.select import onnxruntime_providers

    providers = onnxruntime_providers()
    found: list[Variant] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "cpu":
            found.append(Variant(name, fp32_dir, {"device": "cpu"}, ["--device", "cpu"]))
        elif name.startswith("ort-cuda") and "CUDAExecutionProvider" in providers:
            model = fp32_dir if name.endswith("fp32") else make_fp16_dir(fp32_dir, RESULTS / "raw" / "model-fp16")
            found.append(Variant(name, model, {"engine": "onnxruntime", "device": "cuda"},
                                 ["--engine", "onnxruntime", "--device", "cuda"]))
        elif name == "ort-trt-ep-fp16" and "TensorrtExecutionProvider" in providers:
            found.append(Variant(name, fp32_dir, {"engine": "onnxruntime", "device": "cuda",
                                                  "ort_tensorrt_provider": True, "ort_tensorrt_fp16": True,
                                                  "ort_tensorrt_cache_dir": RESULTS / "raw" / "trt-cache"}))
        elif name == "tensorrt":
            found.append(Variant(name, fp32_dir, {"engine": "tensorrt", "device": "cuda"},
                                 ["--engine", "tensorrt", "--device", "cuda"]))
        elif name in ALL_VARIANTS:
            skipped[name] = f"onnxruntime offers only {providers}"
        else:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)}")
    return found, skipped


def bench_engine(variant: Variant, shapes: list[tuple[int, int]], seconds: float, max_rows: int) -> dict[str, Any]:
    """Median/p99 latency and rows/s of `engine.run` per (rows, tokens) shape on instance 0."""
    from millibatch.engines.base import EngineInputs
    from millibatch.engines.model_dir import Manifest
    from millibatch.engines.select import EngineOptions, EngineUnavailable, load_engine

    manifest = Manifest.load(variant.model_dir)
    try:
        engine = load_engine(variant.model_dir, manifest,
                             EngineOptions(max_rows=max_rows, **variant.options))
    except EngineUnavailable as exc:
        return {"variant": variant.name, "skipped": str(exc)}
    rows_out = []
    try:
        for rows, tokens in shapes:
            length = engine.padded_length(min(tokens, manifest.max_length))
            ids = np.full((rows, length), 1000, dtype=np.int64)
            mask = np.zeros_like(ids)
            mask[:, :tokens] = 1
            inputs = EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
            for _ in range(3):
                engine.run(inputs, 0)
            times: list[float] = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline or len(times) < 5:
                started = time.perf_counter()
                engine.run(inputs, 0)
                times.append(time.perf_counter() - started)
            p50 = median(times)
            rows_out.append({"rows": rows, "tokens": tokens, "padded_length": length, "runs": len(times),
                             "p50_ms": p50 * 1e3, "p99_ms": percentile(times, 99) * 1e3,
                             "rows_per_s": rows / p50, "tokens_per_s": rows * tokens / p50})
    finally:
        info = engine.info
        engine.close()
    return {"variant": variant.name, "engine": info.engine, "device": info.device, "precision": info.precision,
            "reason": info.reason, "shapes": rows_out}


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


def closed_loop(server: Server, texts: Path, concurrency: int, seconds: float, out: Path) -> dict[str, Any]:
    """The load generator's closed loop against `server` (30 s call timeout, up to 1 s of warm-up first)."""
    flags = ["--mode", "closed", "--concurrency", str(concurrency), "--duration", str(seconds),
             "--warmup", str(min(1.0, seconds)), "--timeout", "30"]
    result = run_loadgen(server.launch, None, texts, flags, out, seconds + 120)
    assert result is not None
    return result


def bench_grpc(variant: Variant, seconds: float, concurrency: int, max_rows: int, raw: Path) -> dict[str, Any]:
    """Start `millibatch serve` for the variant, measure batch-1 latency at 16/128 tokens and saturation;
    the load generator's files and the server log go to `raw`."""
    from millibatch.engines.model_dir import Manifest

    if variant.serve_flags is None:
        return {"variant": variant.name, "skipped": "the server has no setting that selects this variant"}
    max_length = Manifest.load(variant.model_dir).max_length
    texts: dict[int, Path] = {}
    for tokens in sorted({min(16, max_length), min(128, max_length), 16}):
        texts[tokens] = raw / f"gpu-{variant.name}-text-{tokens}.json"
        texts[tokens].write_text(json.dumps([text_with_tokens(variant.model_dir / "tokenizer.json", tokens)]))
    spec = serve_launch(variant.model_dir, ["--max-batch-rows", str(max_rows), *variant.serve_flags],
                        name=f"gpu-{variant.name}")
    with running_server(spec, texts[16], logs=raw, wait=300.0) as server:
        result: dict[str, Any] = {"variant": variant.name, "latency": []}
        for tokens in sorted({min(16, max_length), min(128, max_length)}):
            phase = closed_loop(server, texts[tokens], 1, seconds, raw / f"gpu-{variant.name}-latency-{tokens}.json")
            if phase["errors"]:
                raise RuntimeError(f"{phase['errors']} of {phase['requests']} calls failed: {phase['error_kinds']}")
            result["latency"].append({"tokens": tokens, "requests": phase["ok"], "p50_ms": phase["p50_ms"],
                                      "p99_ms": phase["p99_ms"]})
        phase = closed_loop(server, texts[16], concurrency, seconds, raw / f"gpu-{variant.name}-saturation.json")
        # Overload answers RESOURCE_EXHAUSTED: counted as errors, not fatal.
        result["saturation"] = {"concurrency": concurrency, "requests_per_s": phase["throughput_rps"],
                                "errors": phase["errors"], "tokens": 16}
        return result


def machine() -> dict[str, Any]:
    """What this ran on: host, GPUs (NVML), library versions."""
    import onnxruntime as ort

    from millibatch.engines.gpu_info import gpu_stats
    from millibatch.engines.tensorrt_engine import tensorrt_version

    gpus = gpu_stats()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu_count": os.cpu_count(), "gpus": [g.name for g in gpus] if gpus else [],
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "tensorrt": tensorrt_version()}


def markdown(report: dict[str, Any]) -> str:
    """Tables for the raw engine and gRPC results."""
    lines = [f"# GPU benchmark {report['machine']['date']}", "", f"Machine: `{json.dumps(report['machine'])}`", "",
             f"Command: `{report['command']}`", "", "## Engine (instance 0, `engine.run`)", "",
             "| variant | rows | tokens | padded | p50 ms | p99 ms | rows/s | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in report["engine"]:
        if "skipped" in entry:
            lines.append(f"| {entry['variant']} | skipped: {entry['skipped']} |||||||")
            continue
        for s in entry["shapes"]:
            lines.append(f"| {entry['variant']} | {s['rows']} | {s['tokens']} | {s['padded_length']} "
                         f"| {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['rows_per_s']:.0f} | {s['tokens_per_s']:.0f} |")
    lines += ["", "## End to end gRPC (batch 1, tokenized on the server)", "",
              "| variant | tokens | p50 ms | p99 ms | saturation req/s (concurrency) |", "|---|---|---|---|---|"]
    for entry in report["grpc"]:
        if "skipped" in entry:
            lines.append(f"| {entry['variant']} | skipped: {entry['skipped']} ||||")
            continue
        sat = entry["saturation"]
        for lat in entry["latency"]:
            lines.append(f"| {entry['variant']} | {lat['tokens']} | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} "
                         f"| {sat['requests_per_s']:.0f} ({sat['concurrency']}, 16 tokens) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON + markdown into --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model directory or packaged model name")
    parser.add_argument("--variants", default="ort-cuda-fp32,ort-cuda-fp16,ort-trt-ep-fp16,tensorrt",
                        help=f"comma-separated, from {','.join(ALL_VARIANTS)}")
    parser.add_argument("--rows", default="1,8,32", help="batch rows for the engine benchmark")
    parser.add_argument("--tokens", default="16,128", help="tokens per row for the engine benchmark")
    parser.add_argument("--max-rows", type=int, default=32, help="max_batch_rows for engines and server")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent batch-1 requests at saturation")
    parser.add_argument("--quick", action="store_true", help="0.3 s per measurement, concurrency 8 (smoke test)")
    parser.add_argument("--no-grpc", action="store_true", help="engine benchmark only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.concurrency = 0.3, 8
    fp32_dir = resolve_model(args.model)
    shapes = [(int(r), int(t)) for r in args.rows.split(",") for t in args.tokens.split(",")]
    chosen, skipped = variants([v.strip() for v in args.variants.split(",") if v.strip()], fp32_dir)
    command = " ".join(["python -m bench.gpu", *(argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {"machine": machine(), "command": command, "model": str(fp32_dir),
                              "engine": [{"variant": n, "skipped": why} for n, why in skipped.items()], "grpc": []}
    for variant in chosen:
        print(f"engine {variant.name} ...", file=sys.stderr)
        report["engine"].append(bench_engine(variant, shapes, args.seconds, args.max_rows))
    if not args.no_grpc:
        raw = args.out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        runnable = {e["variant"] for e in report["engine"] if "skipped" not in e}
        for variant in chosen:
            if variant.name not in runnable:
                report["grpc"].append({"variant": variant.name, "skipped": "engine unavailable (see above)"})
                continue
            print(f"grpc {variant.name} ...", file=sys.stderr)
            try:
                report["grpc"].append(bench_grpc(variant, args.seconds, args.concurrency, args.max_rows, raw))
            except Exception as exc:  # one variant failing must not lose the others' numbers
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                report["grpc"].append({"variant": variant.name, "skipped": f"failed: {first_line}"})
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"gpu-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"gpu-{stamp}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
