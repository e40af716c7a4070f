"""Peer: FastAPI + ONNX Runtime on the same model.onnx millibatch serves, one session run per request."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bench.peers.fastapi_common import base_parser, serve_app


def main(argv: list[str] | None = None) -> int:
    """Tokenize with the model directory's tokenizer.json and run its ONNX graph, no batching."""
    args = base_parser(__doc__ or "").parse_args(argv)
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = Path(args.model_dir)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / manifest["onnx_file"]), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(int(manifest["max_length"]))
    tokenizer.enable_padding()

    def embed(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
        }
        return session.run(["embeddings"], feeds)[0]

    serve_app(embed, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
