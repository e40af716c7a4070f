"""Served all-MiniLM-L6-v2 embeddings equal PyTorch's (mean pooling, L2 norm) on real STS-B text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from millibatch.client import AsyncClient
from millibatch.engines.convert.validate import cosine_rows, load_stsb, spearman
from tests.helpers import minilm_source, running_server

SAMPLE_PAIRS = 150


def pytorch_embeddings(texts: list[str]) -> np.ndarray:
    """The reference: transformers + mean pooling over the attention mask + L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_source())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out)


@pytest.mark.slow
async def test_served_embeddings_match_pytorch_on_stsb_sample(minilm_dir: Path, stsb_path: Path) -> None:
    pairs = load_stsb(stsb_path)[:: len(load_stsb(stsb_path)) // SAMPLE_PAIRS][:SAMPLE_PAIRS]
    texts = [p.first for p in pairs] + [p.second for p in pairs]
    async with running_server([minilm_dir]) as server, AsyncClient(f"127.0.0.1:{server.port}", timeout=60) as client:
        served = np.concatenate([np.array(await client.embed(texts[i : i + 32])) for i in range(0, len(texts), 32)])
    reference = pytorch_embeddings(texts)
    cosines = cosine_rows(served, reference)
    assert cosines.min() >= 0.99999, f"min cosine {cosines.min():.7f}"
    n = len(pairs)
    gold = [p.score for p in pairs]
    served_score = 100 * spearman(cosine_rows(served[:n], served[n:]).tolist(), gold)
    reference_score = 100 * spearman(cosine_rows(reference[:n], reference[n:]).tolist(), gold)
    assert served_score == pytest.approx(reference_score, abs=0.05)
