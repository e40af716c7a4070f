"""SmoothQuant for ONNX graphs: move activation outliers into the weights before static int8.

A transformer's LayerNorm outputs carry a few channels far larger than the rest. With one int8
scale per tensor (what static QDQ and TensorRT use), those channels set the scale and the others
lose most of their precision. SmoothQuant (Xiao et al., 2023) divides each input channel j of a
MatMul's activations by s_j and multiplies row j of its weights by s_j, which leaves X·W unchanged
in exact arithmetic but evens out the activation ranges; the weights, quantized per output channel,
absorb the outliers better. s_j = max|X_j|^alpha / max|W_j|^(1-alpha), measured on real text.

Here the division is an explicit Mul in front of the MatMul(s) that read the tensor (one Mul per
tensor, shared by e.g. the query, key and value projections), because the tensors also feed residual
connections and so cannot be rescaled at their source. TensorRT fuses such a Mul into the
neighbouring quantize step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from millibatch.engines.base import EngineInputs

#: Migration strength: 0.5 splits the range evenly between activations and weights.
DEFAULT_ALPHA = 0.5
#: Floor for ranges, so a channel that is all zeros does not divide by zero.
EPSILON = 1e-5


def activation_absmax(
    model: Any, tensors: Sequence[str], batches: Sequence[EngineInputs], input_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-channel max |value| of each of `tensors` (last axis) over the real tokens of `batches`."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    found: dict[str, np.ndarray] = {}
    for batch in batches:
        values = session.run(list(tensors), {name: getattr(batch, name) for name in input_names})
        real = batch.attention_mask.astype(bool)
        for name, value in zip(tensors, values, strict=True):
            # Padding positions are computed but never used; their values must not set the scale.
            peak = np.abs(value[real] if value.shape[:2] == real.shape else value).reshape(-1, value.shape[-1]).max(0)
            found[name] = peak if name not in found else np.maximum(found[name], peak)
    return found


def smooth_matmuls(
    onnx_file: Path,
    out_file: Path,
    node_names: Sequence[str],
    batches: Sequence[EngineInputs],
    input_names: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Write a copy of `onnx_file` with SmoothQuant applied to the named MatMuls (constant weights).

    MatMuls that read the same activation share one scale (max over their weights' rows), so the
    activation is divided once. Returns what was done, for the manifest."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    initializers = {init.name: init for init in model.graph.initializer}
    wanted = set(node_names)
    by_input: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.name in wanted and node.op_type == "MatMul" and node.input[1] in initializers:
            by_input.setdefault(node.input[0], []).append(node)
    absmax = activation_absmax(model, list(by_input), batches, input_names)

    order = list(model.graph.node)
    for number, (tensor, nodes) in enumerate(by_input.items()):
        weights = {node.name: numpy_helper.to_array(initializers[node.input[1]]) for node in nodes}
        weight_peak = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
        scale = np.maximum(absmax[tensor], EPSILON) ** alpha / np.maximum(weight_peak, EPSILON) ** (1 - alpha)
        scale = np.maximum(scale, EPSILON).astype(np.float32)
        for node in nodes:
            smoothed = (weights[node.name] * scale[:, None]).astype(np.float32)
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(smoothed, node.input[1]))
        divisor_name, smoothed_name = f"smoothquant_{number}_inverse_scale", f"{tensor}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), divisor_name))
        mul = onnx.helper.make_node("Mul", [tensor, divisor_name], [smoothed_name], name=f"SmoothQuant_{number}")
        for node in nodes:
            node.input[0] = smoothed_name
        # Just before its first reader keeps the node list topologically sorted.
        order.insert(min(order.index(node) for node in nodes), mul)
    del model.graph.node[:]
    model.graph.node.extend(order)
    onnx.save(model, str(out_file))
    return {"smoothquant_alpha": alpha, "smoothed_activations": len(by_input),
            "smoothed_matmuls": sum(len(nodes) for nodes in by_input.values())}
