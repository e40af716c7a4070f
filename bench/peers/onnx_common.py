"""The ONNX Runtime session and tokenizer both ONNX Runtime peers use, set up identically so that the
comparison between them is about serving, not configuration. Imports only onnxruntime, tokenizers and
numpy: the Triton peer runs in its own virtualenv."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

RunIds = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def load(model_dir: str, threads: int) -> tuple[RunIds, Callable[[list[str]], np.ndarray]]:
    """From a model directory: (input_ids, attention_mask, token_type_ids) → embeddings, and texts →
    embeddings (tokenizer.json, truncated to the model's length, padded to the longest). One
    CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = Path(model_dir)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / manifest["onnx_file"]), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(int(manifest["max_length"]))
    tokenizer.enable_padding()

    def run_ids(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return session.run(["embeddings"], feeds)[0]

    def embed_texts(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        return run_ids(
            np.array([e.ids for e in encodings], np.int64),
            np.array([e.attention_mask for e in encodings], np.int64),
            np.array([e.type_ids for e in encodings], np.int64),
        )

    return run_ids, embed_texts
