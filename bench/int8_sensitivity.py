"""Which MatMuls matter for int8 accuracy: keep each weight node fp32 alone and measure cosine to fp32.

    .venv/bin/python bench/int8_sensitivity.py [--source all-MiniLM-L6-v2] [--sentences 256]

Prints the nodes best first and writes the ranking to bench/results/. One quantize + run per weight
node (24 for MiniLM: several minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.convert_variants import fused_fp32  # noqa: E402
from millibatch.engines.convert import quantize, validate  # noqa: E402
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="all-MiniLM-L6-v2")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest, _, fused = fused_fp32(args.source, work)
        tokenizer = Tokenizer.from_file(str(work / "fp32" / "tokenizer.json"))
        batch = validate.encode_padded(tokenizer, validate.sample_sentences(args.sentences), manifest.max_length)
        reference = OnnxRuntimeCpuEngine(fused).run(batch, 0)["embeddings"]

        def mean_cosine(onnx_file: Path) -> float:
            out = OnnxRuntimeCpuEngine(onnx_file).run(batch, 0)["embeddings"]
            return validate.agreement(reference, out)["mean_cosine"]

        quantize.quantize_dynamic_int8(fused, work / "all.onnx")
        baseline = mean_cosine(work / "all.onnx")
        ranking = quantize.rank_sensitive_nodes(fused, quantize.weight_nodes(fused), mean_cosine, work)
    print(f"every node int8: mean cosine {baseline:.5f}")
    for name, score in ranking:
        print(f"{score:.5f}  (+{score - baseline:.5f})  {name} kept fp32")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"int8_sensitivity-{stamp}.json"
    out.write_text(json.dumps({"source": args.source, "all_int8": baseline, "ranking": ranking}, indent=1) + "\n")
    print(f"raw numbers: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
