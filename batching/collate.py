"""Pad a batch of rows into the engine's input arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from millibatch.batching.work import Row
from millibatch.engines.base import EngineInputs


def collate(rows: Sequence[Row], padded_length: int) -> EngineInputs:
    """Right-pad `rows` with zeros to `padded_length`; the attention mask marks real tokens."""
    lengths = np.fromiter((row.length for row in rows), dtype=np.int64, count=len(rows))
    # One boolean scatter per array instead of a Python loop over rows (5x faster at 32 rows).
    real = np.arange(padded_length) < lengths[:, None]
    ids = np.zeros(real.shape, dtype=np.int64)
    types = np.zeros(real.shape, dtype=np.int64)
    ids[real] = np.concatenate([row.ids for row in rows])
    types[real] = np.concatenate([row.type_ids for row in rows])
    return EngineInputs(input_ids=ids, attention_mask=real.astype(np.int64), token_type_ids=types)
