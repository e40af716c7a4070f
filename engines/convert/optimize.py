"""Graph fusion and fp16 conversion with ONNX Runtime's transformer optimizer.

Fusion folds BERT sub-graphs (embeddings + LayerNorm, self-attention, GELU, skip + LayerNorm) into
single contrib ops, so ONNX Runtime runs fewer, larger kernels and int8 quantization sees whole
attention blocks. The graph keeps its three int64 inputs, its outputs and the dynamic axes.
"""

from __future__ import annotations

import logging
from pathlib import Path

#: Ops that stay fp32 in an fp16 graph: normalisation, softmax and the pooling / L2-normalise tail
#: lose accuracy in half precision (sums over many rows, squares, small denominators).
FP16_KEEP_FP32_OPS = [
    "LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax",
    "ReduceSum", "ReduceMean", "ReduceL2", "Sqrt", "Pow", "Div", "Clip", "Max", "Expand",
]

#: The fused attention ops of ONNX Runtime's transformer optimizer (one per encoder layer when it works).
ATTENTION_OPS = ("Attention", "MultiHeadAttention")


def _optimize(onnx_file: Path, use_gpu: bool, num_heads: int, hidden_size: int):  # type: ignore[no-untyped-def]
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    # The attention mask also feeds the mean pooling, so keep it an explicit int64 input rather
    # than letting EmbedLayerNormalization swallow it into a mask index.
    options.enable_embed_layer_norm = False
    # On CPU, ONNX Runtime's SkipLayerNormalization kernel is slower than the residual Add plus the
    # LayerNormalization it fuses itself at session start: with it the fused graph ran 0.94x the plain
    # one at 1x128 on one thread, without it 1.01x (bench/convert_variants.py). GPUs keep the kernel.
    options.enable_skip_layer_norm = use_gpu
    # opt_level 0: only the Python fusions, so the saved graph is portable across execution providers
    # (ORT's own level-2 rewrites are provider-specific and are re-applied at session start anyway).
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    return optimizer.optimize_model(
        str(onnx_file), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
        optimization_options=options, opt_level=0, use_gpu=use_gpu,
    )


def fuse(
    onnx_file: Path, out_file: Path, *, num_heads: int, hidden_size: int, use_gpu: bool = False
) -> dict[str, int]:
    """Write the fused graph of `onnx_file` to `out_file`; returns how many of each fused op it has.

    num_heads / hidden_size come from the checkpoint config: attention fusion cannot infer them
    from this graph."""
    model = _optimize(onnx_file, use_gpu, num_heads, hidden_size)
    model.save_model_to_file(str(out_file))
    return _fused_counts(model)


def to_fp16(
    onnx_file: Path, out_file: Path, *, num_heads: int, hidden_size: int, fused: bool = True
) -> dict[str, int]:
    """Write an fp16 copy of `onnx_file` (fused first when `fused`): fp32 inputs/outputs and
    FP16_KEEP_FP32_OPS stay fp32. Returns the fused-op counts."""
    model = _optimize(onnx_file, True, num_heads, hidden_size) if fused else _plain(onnx_file)
    model.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_KEEP_FP32_OPS)
    model.save_model_to_file(str(out_file))
    return _fused_counts(model) if fused else {}


def _plain(onnx_file: Path):  # type: ignore[no-untyped-def]
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    return OnnxModel(onnx.load(str(onnx_file)))


def _fused_counts(model) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts = model.get_fused_operator_statistics()
    return {str(op): int(n) for op, n in counts.items() if n}
