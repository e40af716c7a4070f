"""Pad a batch of rows into the engine's input arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batching.work import Row
from engines.base import EngineInputs


def collate(rows: Sequence[Row], padded_length: int) -> EngineInputs:
    """Right-pad `rows` with zeros to `padded_length`; the attention mask marks real tokens."""
    count = len(rows)
    ids = np.zeros((count, padded_length), dtype=np.int64)
    types = np.zeros((count, padded_length), dtype=np.int64)
    mask = np.zeros((count, padded_length), dtype=np.int64)
    for i, row in enumerate(rows):
        n = row.length
        ids[i, :n] = row.ids
        types[i, :n] = row.type_ids
        mask[i, :n] = 1
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=types)


def padding_ratio(rows: Sequence[Row], padded_length: int) -> float:
    """Computed tokens over real tokens (1.0 means no padding)."""
    real = sum(r.length for r in rows)
    return len(rows) * padded_length / real if real else 1.0
