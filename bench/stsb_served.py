"""Full STS-B test set through a running millibatch server, against PyTorch.

Embeds all 2,758 sentences over gRPC (server-side tokenization, batching), then reports the STS-B
Spearman x 100 of the served embeddings, PyTorch's on the same pairs, and the cosine between served
and PyTorch vectors.

    .venv/bin/python bench/stsb_served.py                 # starts its own server on the default model
    .venv/bin/python bench/stsb_served.py --target host:port --model NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from millibatch.client import AsyncClient  # noqa: E402
from millibatch.engines.convert.validate import cosine_rows, default_stsb_path, load_stsb, spearman  # noqa: E402


async def served_embeddings(target: str, model: str, texts: list[str]) -> np.ndarray:
    in_flight = asyncio.Semaphore(8)  # stay inside the server's queue bound

    async with AsyncClient(target, timeout=120) as client:

        async def embed(chunk: list[str]) -> list[list[float]]:
            async with in_flight:
                return await client.embed(chunk, model=model, truncate=True)

        chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
        results = await asyncio.gather(*(embed(c) for c in chunks))
    return np.concatenate([np.array(r, dtype=np.float32) for r in results])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="", help="a running server; default: start one in-process")
    parser.add_argument("--model", default="", help="model name (default: the server's default)")
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stsb_served.json")
    args = parser.parse_args()
    path = default_stsb_path()
    if path is None:
        raise SystemExit("needs ../shared/data/stsb-test.tsv (or $MILLIBATCH_STSB)")
    pairs = load_stsb(path)
    texts = [p.first for p in pairs] + [p.second for p in pairs]

    if args.target:
        served = asyncio.run(served_embeddings(args.target, args.model, texts))
    else:
        from bench.run import ensure_model
        from tests.helpers import running_server

        model_dir = ensure_model(args.model_dir)

        async def in_process() -> np.ndarray:
            async with running_server([model_dir]) as server:
                return await served_embeddings(f"127.0.0.1:{server.port}", args.model, texts)

        served = asyncio.run(in_process())

    from tests.service.test_accuracy import pytorch_embeddings

    reference = pytorch_embeddings(texts)
    n = len(pairs)
    gold = [p.score for p in pairs]
    cosines = cosine_rows(served, reference)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "pairs": n,
        "served_spearman": round(100 * spearman(cosine_rows(served[:n], served[n:]).tolist(), gold), 4),
        "pytorch_spearman": round(100 * spearman(cosine_rows(reference[:n], reference[n:]).tolist(), gold), 4),
        "min_cosine_to_pytorch": float(cosines.min()),
        "mean_cosine_to_pytorch": float(cosines.mean()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
