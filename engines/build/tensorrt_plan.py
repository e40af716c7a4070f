"""Build a TensorRT plan from an ONNX graph: one optimization profile per sequence-length bucket.

Needs the `tensorrt` package and a CUDA GPU; without them `build_plan` raises TensorRTUnavailable with
the reason, before any work is done. The runtime side lives in engines/tensorrt_engine.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Plan file written next to model.onnx; the manifest records it with its profiles.
PLAN_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be imported here, so no plan can be built."""


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (min, opt, max) batch rows and sequence lengths."""

    batch: tuple[int, int, int]
    seq_len: tuple[int, int, int]

    def as_dict(self) -> dict[str, list[int]]:
        """JSON form for the manifest."""
        return {key: list(value) for key, value in asdict(self).items()}


def length_buckets(seq_len: tuple[int, int, int], batch: tuple[int, int, int]) -> list[Profile]:
    """Split MIN..MAX tokens into buckets that double in length (e.g. 1-32, 33-64, 65-128, ...).

    Each bucket gets its own profile so short requests run kernels tuned for short inputs; the
    bucket's opt length is its upper end, except the bucket holding the requested OPT, which uses OPT.
    """
    low, opt, high = seq_len
    if not 1 <= low <= opt <= high:
        raise ValueError(f"--seq-len needs 1 <= MIN <= OPT <= MAX, got {seq_len}")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {batch}")
    profiles = []
    start, end = low, max(low, 32)
    while start <= high:
        end = min(end, high)
        best = opt if start <= opt <= end else end
        profiles.append(Profile(batch=batch, seq_len=(start, best, end)))
        start, end = end + 1, end * 2
    return profiles


def tensorrt_version() -> str:
    """The importable TensorRT's version; raises TensorRTUnavailable when there is none."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable(
            "--engine tensorrt needs the 'tensorrt' Python package and a CUDA GPU; "
            f"it cannot be imported here ({error}). Build on the GPU host, or use --engine onnxruntime."
        ) from error
    return str(tensorrt.__version__)


def build_plan(
    onnx_file: Path,
    out_dir: Path,
    profiles: Sequence[Profile],
    input_names: Sequence[str],
    *,
    precision: str,
    workspace_bytes: int = 2 << 30,
) -> dict[str, Any]:
    """Build `out_dir/model.plan` with `profiles`; fp16/int8 flags follow `precision`.

    int8 expects a QDQ graph (explicit quantization, scales from calibration). The timing cache is
    kept beside the plan so a rebuild on the same GPU reuses the kernel measurements.
    """
    tensorrt_version()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_file.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    cache_file = out_dir / TIMING_CACHE_FILE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name in input_names:
            shapes = [(b, s) for b, s in zip(profile.batch, profile.seq_len, strict=True)]
            trt_profile.set_shape(name, *shapes)
        config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the plan (see its log above)")
    (out_dir / PLAN_FILE).write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"plan_file": PLAN_FILE, "tensorrt": trt.__version__, "workspace_bytes": workspace_bytes,
            "profiles": [p.as_dict() for p in profiles]}
