"""Build a TensorRT plan from an ONNX graph: one optimization profile per sequence-length bucket.

Needs the `tensorrt` package and a CUDA GPU; without them `build_plan` raises TensorRTUnavailable with
the reason, before any work is done. The runtime side lives in engines/tensorrt_engine.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from millibatch.engines.buckets import BucketPlan
from millibatch.engines.plans import PlanSpec
from millibatch.engines.tensorrt_engine import tensorrt_version as installed_tensorrt_version

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


def runtime_profiles(buckets: BucketPlan, instances: int, opt_rows: int) -> list[Profile]:
    """The profiles engines/tensorrt_engine.py expects, instance-major: for each execution context one
    profile per length bucket, the sequence length fixed to the bucket (batches are padded to it) and
    rows 1..max_rows. Concurrent contexts must not share a profile, hence a full set per instance."""
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    shapes = [buckets.profile_shapes(bucket, opt_rows) for bucket in buckets.buckets]
    return [Profile(batch=(s.min[0], s.opt[0], s.max[0]), seq_len=(s.min[1], s.opt[1], s.max[1]))
            for _ in range(instances) for s in shapes]


def tensorrt_version() -> str:
    """The importable TensorRT's version; raises TensorRTUnavailable when there is none."""
    version = installed_tensorrt_version()
    if version is None:
        raise TensorRTUnavailable(
            "--engine tensorrt needs the 'tensorrt' Python package and a CUDA GPU; it cannot be imported "
            "here. Build on the GPU host, or use --engine onnxruntime."
        )
    return version


def build_plan(
    onnx_file: Path,
    out_dir: Path,
    buckets: BucketPlan,
    input_names: Sequence[str],
    *,
    precision: str,
    instances: int = 1,
    opt_rows: int = 8,
    workspace_bytes: int = 2 << 30,
) -> tuple[PlanSpec, dict[str, Any]]:
    """Build `out_dir/model.<sm>.<precision>.plan` with the runtime's profiles; fp16/int8 flags follow
    `precision`. Returns the manifest entry (engines/plans.py) and build details.

    int8 expects a QDQ graph (explicit quantization, scales from calibration). The timing cache is
    kept beside the plan so a rebuild on the same GPU reuses the kernel measurements.
    """
    tensorrt_version()
    import tensorrt as trt

    from millibatch.engines.cuda_runtime import compute_capability

    profiles = runtime_profiles(buckets, instances, opt_rows)
    capability = compute_capability()
    plan_file = f"model.sm{capability[0]}{capability[1]}.{precision}.plan"

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
    (out_dir / plan_file).write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    spec = PlanSpec(file=plan_file, precision=precision, tensorrt_version=str(trt.__version__),
                    compute_capability=capability, instances=instances, max_rows=buckets.max_rows,
                    lengths=tuple(buckets.lengths))
    return spec, {"workspace_bytes": workspace_bytes, "profiles": [p.as_dict() for p in profiles]}
