"""Accuracy and speed of convert's variants side by side: PyTorch, fp32, fp32 fused, int8 (CPU).

    .venv/bin/python bench/convert_variants.py [--source all-MiniLM-L6-v2] [--rounds 2]

Builds every variant from one fp32 export with the same functions `convert` uses, scores each on
STS-B, then times them interleaved (variant A, B, C, A, B, C, ...) so a busy machine slows all of
them alike. Prints a table and writes the raw per-call timings to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.base import EngineInputs  # noqa: E402
from engines.build import export, optimize, quantize, sources, validate  # noqa: E402
from engines.build.convert import DEFAULT_INT8_FP32_PATTERNS, ConvertOptions, convert  # noqa: E402
from engines.onnxruntime_engine import OnnxRuntimeCpuEngine  # noqa: E402

SHAPES = [(1, 16, 100), (1, 128, 30), (32, 128, 5)]  # rows, tokens, timed calls per round


def synthetic(rows: int, tokens: int) -> EngineInputs:
    """A full batch of `rows` x `tokens` real-vocabulary ids (no padding)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(2000, 20000, size=(rows, tokens), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return EngineInputs(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))


def build_variants(source: str, work: Path, stsb: Path) -> tuple[dict[str, Path], Path, dict[str, object]]:
    """fp32 model dir via convert (unfused), then fused and int8 graphs from its model.onnx."""
    base = work / "fp32"
    manifest = convert(ConvertOptions(source=source, output=base, fuse=False, stsb=stsb))
    config = json.loads((sources.resolve(source).path / "config.json").read_text())
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    files = {"fp32": base / "model.onnx", "fp32-fused": work / "fused.onnx"}
    optimize.fuse(files["fp32"], files["fp32-fused"], num_heads=heads, hidden_size=hidden)
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
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    stsb = validate.default_stsb_path()
    if stsb is None:
        print("STS-B TSV not found (set MILLIBATCH_STSB)", file=sys.stderr)
        return 2
    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as tmp:
        files, base, build_info = build_variants(args.source, Path(tmp), stsb)
        tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        max_length = json.loads((base / "manifest.json").read_text())["max_length"]
        head = export.build_head(export.load_reference(sources.resolve(args.source).path, "embed"), "embed")

        def torch_run(batch: EngineInputs) -> np.ndarray:
            with torch.no_grad():
                tensors = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
                return head(*tensors)[0].numpy()

        runners: dict[str, Callable[[EngineInputs], np.ndarray]] = {"pytorch": torch_run}
        def engine_runner(engine: OnnxRuntimeCpuEngine) -> Callable[[EngineInputs], np.ndarray]:
            return lambda batch: engine.run(batch, 0)["embeddings"]

        for name, file in files.items():
            runners[name] = engine_runner(OnnxRuntimeCpuEngine(file))

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

        timings: dict[str, dict[str, list[float]]] = {}
        for rows, tokens, calls in SHAPES:
            batch, key = synthetic(rows, tokens), f"{rows}x{tokens}"
            timings[key] = {name: [] for name in runners}
            for run in runners.values():
                run(batch)  # warm-up
            for _ in range(args.rounds * calls):
                for name, run in runners.items():
                    started = time.perf_counter()
                    run(batch)
                    timings[key][name].append(time.perf_counter() - started)
            print(f"[bench] timed {key}", file=sys.stderr, flush=True)

    medians = {k: {n: float(np.median(v)) * 1000 for n, v in per.items()} for k, per in timings.items()}
    header = f"| variant | STS-B | mean cos | min cos | {' | '.join(f'{k} ms (× fp32)' for k in medians)} |"
    print(header)
    print("|" + "---|" * (4 + len(medians)))
    for name in runners:
        acc = accuracy[name]
        cells = [f"{medians[k][name]:.2f} ({medians[k]['fp32'] / medians[k][name]:.2f}×)" for k in medians]
        print(f"| {name} | {acc['stsb_spearman']:.2f} | {acc['mean_cosine']:.4f} | {acc['min_cosine']:.4f} | "
              + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "when": stamp, "machine": platform.processor() or platform.machine(),
        "cores": len(__import__("os").sched_getaffinity(0)), "vnni": quantize.has_vnni(),
        "source": args.source, "rounds": args.rounds, "accuracy": accuracy, "median_ms": medians,
        "build": build_info, "raw_seconds": timings,
    }
    out = args.out / f"convert_variants-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"raw numbers: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
