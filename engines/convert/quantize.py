"""int8 quantization: dynamic for ONNX Runtime on CPU, static QDQ (calibrated) for TensorRT.

Dynamic quantization stores weights as int8 (per output channel) and quantizes activations per batch
at run time; it needs no calibration data. Static QDQ puts fixed scales, measured on real text, on
every quantized tensor, which is what TensorRT's int8 kernels consume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from millibatch.engines.base import EngineInputs
from millibatch.engines.convert import smooth

#: Ops dynamic quantization turns into int8 kernels (fused Attention becomes QAttention).
DYNAMIC_OPS = ["MatMul", "Attention"]


def cpuinfo_value(key: str) -> str:
    """The first CPU's `key` line in /proc/cpuinfo ("flags", "model name"); empty where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == key), "")


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    return set(cpuinfo_value("flags").split())


def has_vnni(flags: set[str] | None = None) -> bool:
    """Whether the CPU has VNNI int8 dot products (no risk of u8*s8 saturation on AVX2/AVX512)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@contextmanager
def _root_logger_at(level: int) -> Iterator[None]:
    """onnxruntime.quantization advises on the root logger ("consider pre-processing", which does not
    apply to these graphs); raise the root level while it runs, then put it back."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, level))
    try:
        yield
    finally:
        root.setLevel(previous)


def weight_nodes(onnx_file: Path) -> list[str]:
    """Names of the nodes dynamic quantization would touch (MatMul with a constant weight, Attention)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    constants = {init.name for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "Attention" or (node.op_type == "MatMul" and node.input[1] in constants):
            names.append(node.name)
    return names


def quantize_dynamic_int8(
    onnx_file: Path, out_file: Path, *, exclude: Sequence[str] = (), reduce_range: bool | None = None
) -> dict[str, object]:
    """Write a dynamically quantized int8 copy of `onnx_file`; `exclude` names nodes kept in fp32.

    reduce_range (7-bit weights) avoids the u8*s8 overflow of AVX2/AVX512 without VNNI; with VNNI
    it only costs accuracy, so by default it follows the CPU. Returns what was done, for the manifest.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce = (not has_vnni()) if reduce_range is None else reduce_range
    with _root_logger_at(logging.ERROR):
        quantize_dynamic(
            str(onnx_file), str(out_file), op_types_to_quantize=DYNAMIC_OPS, per_channel=True,
            reduce_range=reduce, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
            # Shape inference cannot see through fused contrib ops; everything else in these graphs is fp32.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {"method": "dynamic", "per_channel": True, "reduce_range": reduce, "fp32_nodes": list(exclude)}


class _Calibration:
    """Feeds encoded STS-B batches to the calibrator (onnxruntime's CalibrationDataReader protocol)."""

    def __init__(self, batches: Sequence[EngineInputs], input_names: Sequence[str]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{name: getattr(batch, name) for name in input_names} for batch in batches]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        pass


def ffn_output_nodes(names: Sequence[str]) -> list[str]:
    """The feed-forward output projections among `names` (BERT-style exports: layer.N/output/dense,
    not attention/output/dense). Their input, the GELU output, has outliers that one static int8
    scale per tensor cannot hold even after smoothing."""
    return [n for n in names if n.endswith("/output/dense/MatMul") and "/attention/" not in n]


def quantize_static_qdq(
    onnx_file: Path,
    out_file: Path,
    batches: Sequence[EngineInputs],
    input_names: Sequence[str],
    *,
    exclude: Sequence[str] = (),
) -> dict[str, object]:
    """Write a QDQ int8 copy of `onnx_file` calibrated on `batches` (real text, encoded).

    Symmetric int8 activations and per-channel weights, as TensorRT expects; only MatMuls are
    quantized so normalisation, softmax and the pooling tail stay in float. SmoothQuant first evens
    out the activations of the MatMuls to be quantized (engines/convert/smooth.py). Activation ranges
    are the moving average of each calibration batch's min/max, so one extreme batch does not coarsen
    the scale for all.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kept = set(exclude)
    smoothed = out_file.with_name(out_file.stem + ".smoothed.onnx")
    try:
        done = smooth.smooth_matmuls(onnx_file, smoothed, [n for n in weight_nodes(onnx_file) if n not in kept],
                                     batches, input_names)
        with _root_logger_at(logging.ERROR):
            quantize_static(
                str(smoothed), str(out_file), _Calibration(batches, input_names), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"], per_channel=True, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                               "CalibMovingAverage": True},
            )
    finally:
        smoothed.unlink(missing_ok=True)
    return {"method": "static-qdq", "calibrate_method": "minmax-moving-average", **done,
            "calibration_rows": sum(int(b.input_ids.shape[0]) for b in batches), "fp32_nodes": list(exclude)}


def rank_sensitive_nodes(
    onnx_file: Path, candidates: Sequence[str], score: Callable[[Path], float], scratch: Path
) -> list[tuple[str, float]]:
    """Quantize with each candidate alone kept in fp32 and rank by `score` (higher = better), best first.

    This is how the default fp32 exclusions were found; it costs one quantize+score per candidate.
    """
    results = []
    for name in candidates:
        trial = scratch / "sensitivity.onnx"
        quantize_dynamic_int8(onnx_file, trial, exclude=[name])
        results.append((name, score(trial)))
    return sorted(results, key=lambda item: item[1], reverse=True)
