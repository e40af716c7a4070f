"""Peer: FastAPI + ONNX Runtime on the same model.onnx millibatch serves, one session run per request."""

from __future__ import annotations

import sys

from bench.peers.fastapi_common import base_parser, serve_app
from bench.peers.onnx_common import load


def main(argv: list[str] | None = None) -> int:
    """Tokenize with the model directory's tokenizer.json and run its ONNX graph, no batching."""
    args = base_parser(__doc__ or "").parse_args(argv)
    _, embed = load(args.model_dir, args.threads)
    serve_app(embed, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
