"""Peer: NVIDIA Triton (via nvidia-pytriton, its real tritonserver on CPU) with dynamic batching.

pytriton ships only Triton's Python backend, so the bound Python step runs the same model.onnx with ONNX
Runtime. Two front ends:
  ids   token ids tokenized by the client, padded to a power-of-two bucket so equal shapes can batch
        (what Triton users do without an ensemble);
  text  raw text, tokenized in the server's Python step per dynamic batch (the fairer variant).
Runs from the Triton virtual environment (nvidia-pytriton pins protobuf/numpy apart from millibatch's).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from bench.peers.onnx_common import load


def main(argv: list[str] | None = None) -> int:
    """Bind the model named `minilm` and serve until killed."""
    parser = argparse.ArgumentParser(description="pytriton peer")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--mode", choices=("ids", "text"), required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32, help="same row limit as millibatch's default")
    parser.add_argument("--max-delay-us", type=int, default=2000, help="same wait as millibatch's max_delay_ms")
    parser.add_argument("--queue-timeout-us", type=int, default=0,
                        help="queue policy: reject requests still queued after this long (0: no queue policy); "
                             "the way a Triton user gives requests a deadline")
    parser.add_argument("--max-queue-size", type=int, default=0, help="queue policy: refuse beyond this many queued")
    args = parser.parse_args(argv)

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
    from pytriton.triton import Triton, TritonConfig

    run_ids, embed_texts = load(args.model_dir, args.threads)

    @batch  # type: ignore[untyped-decorator]
    def infer_ids(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> dict[str, Any]:
        return {"embeddings": run_ids(input_ids, attention_mask, token_type_ids)}

    @batch  # type: ignore[untyped-decorator]
    def infer_text(text: np.ndarray) -> dict[str, Any]:
        return {"embeddings": embed_texts([t.decode("utf-8") for t in text[:, 0]])}

    if args.mode == "ids":
        names = ("input_ids", "attention_mask", "token_type_ids")
        inputs = [Tensor(name=n, dtype=np.int64, shape=(-1,)) for n in names]
        function = infer_ids
    else:
        inputs = [Tensor(name="text", dtype=bytes, shape=(1,))]
        function = infer_text
    policy = None
    if args.queue_timeout_us or args.max_queue_size:
        policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, default_timeout_microseconds=args.queue_timeout_us,
                             allow_timeout_override=True, max_queue_size=args.max_queue_size)
    config = ModelConfig(max_batch_size=args.max_batch,
                         batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_delay_us,
                                                default_queue_policy=policy))
    triton_config = TritonConfig(grpc_address="127.0.0.1", http_address="127.0.0.1", grpc_port=args.grpc_port,
                                 http_port=args.http_port, metrics_address="127.0.0.1",
                                 metrics_port=args.metrics_port)
    with Triton(config=triton_config) as triton:
        triton.bind(model_name="minilm", infer_func=function, inputs=inputs,
                    outputs=[Tensor(name="embeddings", dtype=np.float32, shape=(-1,))], config=config, strict=False)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
