"""Accuracy and speed of convert's variants side by side: PyTorch, fp32, fp32 fused, int8 (CPU).

    .venv/bin/python bench/convert_variants.py [--source all-MiniLM-L6-v2] [--rounds 2] [--threads 1 2]

Builds every variant from one fp32 export with the same functions `convert` uses, scores each on
STS-B, then times them interleaved (variant A, B, C, A, B, C, ...) so a busy machine slows all of
them alike, once per ONNX Runtime thread count (default: the threads one server instance gets by
default, and all the cores). Prints a table per thread count and writes the raw per-call timings to
bench/results/. "int8+ort-skipln" is the int8 graph with all of ONNX Runtime's load-time rewrites,
including the SkipLayerNormFusion the engine leaves out (engines/onnxruntime_engine.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import interleaved  # noqa: E402
from millibatch.engines.base import EngineInputs, synthetic_inputs  # noqa: E402
from millibatch.engines.convert import export, optimize, quantize, sources, validate  # noqa: E402
from millibatch.engines.convert.convert import DEFAULT_INT8_FP32_PATTERNS, ConvertOptions, convert  # noqa: E402
from millibatch.engines.model_dir import Manifest  # noqa: E402
from millibatch.engines.onnxruntime_engine import (  # noqa: E402
    OnnxRuntimeCpuEngine,
    auto_instances,
    cpu_session,
    default_threads_per_instance,
    usable_cores,
)

SHAPES = [(1, 16, 100), (1, 128, 30), (32, 128, 5)]  # rows, tokens, timed calls per round


def fused_fp32(source: str, work: Path, stsb: Path | None = None) -> tuple[Manifest, Path, Path]:
    """An unfused fp32 model dir via convert (work/fp32) and the fused graph of its model.onnx
    (work/fused.onnx), as convert would fuse it; returns the manifest, the dir and the fused graph."""
    base = work / "fp32"
    manifest = convert(ConvertOptions(source=source, output=base, fuse=False, stsb=stsb))
    config = json.loads((sources.resolve(source).path / "config.json").read_text())
    fused = work / "fused.onnx"
    optimize.fuse(base / "model.onnx", fused, num_heads=int(config["num_attention_heads"]),
                  hidden_size=int(config["hidden_size"]))
    return manifest, base, fused


def build_variants(source: str, work: Path, stsb: Path) -> tuple[dict[str, Path], Path, dict[str, object]]:
    """fp32 model dir via convert (unfused), then fused and int8 graphs from its model.onnx."""
    manifest, base, fused = fused_fp32(source, work, stsb)
    files = {"fp32": base / "model.onnx", "fp32-fused": fused}
    keep = [n for n in quantize.weight_nodes(files["fp32-fused"]) if any(p in n for p in DEFAULT_INT8_FP32_PATTERNS)]
    files["int8"] = work / "int8.onnx"
    quantize.quantize_dynamic_int8(files["fp32-fused"], files["int8"], exclude=keep)
    files["int8-all"] = work / "int8-all.onnx"
    quantize.quantize_dynamic_int8(files["fp32-fused"], files["int8-all"])
    return files, base, {"fp32_manifest_validation": manifest.validation, "int8_fp32_nodes": keep}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds; medians are over all of them")
    server_default = default_threads_per_instance(auto_instances())
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({server_default, usable_cores()}),
                        help="ONNX Runtime intra-op threads per session to time with")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    stsb = validate.default_stsb_path()
    if stsb is None:
        print("STS-B TSV not found (set MILLIBATCH_STSB)", file=sys.stderr)
        return 2
    import torch
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        files, base, build_info = build_variants(args.source, Path(tmp), stsb)
        tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        max_length = json.loads((base / "manifest.json").read_text())["max_length"]
        head = export.build_head(export.load_reference(sources.resolve(args.source).path, "embed"), "embed")

        torch_run = partial(export.run_reference, head)

        def engine_runner(engine: OnnxRuntimeCpuEngine) -> Callable[[EngineInputs], np.ndarray]:
            return lambda batch: engine.run(batch, 0)["embeddings"]

        def all_rewrites_runner(file: Path, threads: int) -> Callable[[EngineInputs], np.ndarray]:
            """A session with every ONNX Runtime rewrite, CPU_DISABLED_OPTIMIZERS included."""
            session = cpu_session(file, threads, disabled_optimizers=())
            names = [i.name for i in session.get_inputs()]
            return lambda batch: session.run(["embeddings"], {n: getattr(batch, n) for n in names})[0]

        def runners_with(threads: int) -> dict[str, Callable[[EngineInputs], np.ndarray]]:
            found: dict[str, Callable[[EngineInputs], np.ndarray]] = {"pytorch": torch_run}
            for name, file in files.items():
                found[name] = engine_runner(OnnxRuntimeCpuEngine(file, threads_per_instance=threads))
            # What the engine's CPU_DISABLED_OPTIMIZERS buys: int8 as ONNX Runtime would rewrite it.
            found["int8+ort-skipln"] = all_rewrites_runner(files["int8"], threads)
            return found

        torch.set_num_threads(max(args.threads))
        runners = runners_with(max(args.threads))

        pairs = validate.load_stsb(stsb)
        check = validate.encode_padded(tokenizer, validate.sample_sentences(256, stsb), max_length)
        reference = torch_run(check)
        accuracy = {}
        for name, run in runners.items():
            print(f"[bench] scoring {name} on STS-B", file=sys.stderr, flush=True)
            def embed(texts: list[str], run: Callable[[EngineInputs], np.ndarray] = run) -> np.ndarray:
                return run(validate.encode_padded(tokenizer, texts, max_length))

            score = validate.stsb_score(embed, pairs)
            accuracy[name] = {"stsb_spearman": round(score, 3), **validate.agreement(reference, run(check))}

        timings: dict[str, dict[str, dict[str, list[float]]]] = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            timed = runners if threads == max(args.threads) else runners_with(threads)
            per_shape = timings[f"{threads} threads"] = {}
            for rows, tokens, calls in SHAPES:
                batch, key = synthetic_inputs(rows, tokens), f"{rows}x{tokens}"
                per_shape[key] = interleaved({name: partial(run, batch) for name, run in timed.items()},
                                             args.rounds * calls)
                print(f"[bench] timed {key} on {threads} threads", file=sys.stderr, flush=True)

    medians = {
        threads: {k: {n: float(np.median(v)) * 1000 for n, v in per.items()} for k, per in shapes.items()}
        for threads, shapes in timings.items()
    }
    for threads, by_shape in medians.items():
        print(f"\n{threads} per session (ONNX Runtime intra-op, PyTorch set_num_threads)")
        header = f"| variant | STS-B | mean cos | min cos | {' | '.join(f'{k} ms (× fp32)' for k in by_shape)} |"
        print(header)
        print("|" + "---|" * (4 + len(by_shape)))
        for name in runners:
            acc = accuracy[name]
            cells = [f"{by_shape[k][name]:.2f} ({by_shape[k]['fp32'] / by_shape[k][name]:.2f}×)" for k in by_shape]
            print(f"| {name} | {acc['stsb_spearman']:.2f} | {acc['mean_cosine']:.4f} | {acc['min_cosine']:.4f} | "
                  + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "when": stamp, "machine": platform.processor() or platform.machine(),
        "cores": usable_cores(), "vnni": quantize.has_vnni(),
        "source": args.source, "rounds": args.rounds, "accuracy": accuracy, "median_ms": medians,
        "build": build_info, "raw_seconds": timings,
    }
    out = args.out / f"convert_variants-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"raw numbers: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
