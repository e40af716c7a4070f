"""Baseline peer: FastAPI + transformers on PyTorch, one forward pass per request (mean pool + L2 norm)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bench.peers.fastapi_common import base_parser, serve_app


def main(argv: list[str] | None = None) -> int:
    """Load the checkpoint the model directory was converted from and serve it."""
    args = base_parser(__doc__ or "").parse_args(argv)
    import torch
    from transformers import AutoModel, AutoTokenizer

    manifest = json.loads((Path(args.model_dir) / "manifest.json").read_text(encoding="utf-8"))
    source = manifest["source"]
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    max_length = int(manifest["max_length"])

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    serve_app(embed, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
