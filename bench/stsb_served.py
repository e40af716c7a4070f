"""Full STS-B test set through a running millibatch server, against PyTorch.

Embeds all 2,758 sentences over gRPC (server-side tokenization, batching), then reports the STS-B
Spearman x 100 of the served embeddings, PyTorch's on the same pairs, and the cosine between served
and PyTorch vectors.

    .venv/bin/python bench/stsb_served.py                 # starts a server process on the default model
    .venv/bin/python bench/stsb_served.py --target host:port --model NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.processes import running_server, serve_launch  # noqa: E402
from millibatch.client import AsyncClient  # noqa: E402
from millibatch.engines.convert.validate import cosine_rows, default_stsb_path, load_stsb, spearman  # noqa: E402

#: The checkpoint the default model directory was converted from: the PyTorch reference.
REFERENCE = "all-MiniLM-L6-v2"


async def served_embeddings(target: str, model: str, texts: list[str]) -> np.ndarray:
    """Embeddings of `texts` from the server at `target`, 32 texts per call, 8 calls in flight."""
    in_flight = asyncio.Semaphore(8)  # stay inside the server's queue bound

    async with AsyncClient(target, timeout=120) as client:

        async def embed(chunk: list[str]) -> list[list[float]]:
            async with in_flight:
                return await client.embed(chunk, model=model, truncate=True)

        chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
        results = await asyncio.gather(*(embed(c) for c in chunks))
    return np.concatenate([np.array(r, dtype=np.float32) for r in results])


def pytorch_embeddings(texts: list[str]) -> np.ndarray:
    """The reference: the checkpoint in PyTorch with mean pooling and L2 normalisation, as `convert`
    validates against (its head, its reference call, the server's tokenization)."""
    from tokenizers import Tokenizer

    from millibatch.engines.convert import export, sources, validate

    source = sources.resolve(REFERENCE)
    head = export.build_head(export.load_reference(source.path, "embed"), "embed", source.pooling)
    tokenizer = Tokenizer.from_file(str(source.path / "tokenizer.json"))
    chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    return np.concatenate([export.run_reference(head, validate.encode_padded(tokenizer, chunk, source.max_length))
                           for chunk in chunks])


def main() -> None:
    """Embed the STS-B test set through a server and write its Spearman and agreement with PyTorch."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="", help="a running server; default: start one")
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

        model_dir = ensure_model(args.model_dir)
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "texts.json"
            probe.write_text(json.dumps(texts[:1]))
            with running_server(serve_launch(model_dir, ["--no-profile-on-start"]), probe) as server:
                served = asyncio.run(served_embeddings(server.launch.target, args.model, texts))

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
