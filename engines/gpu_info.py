"""GPU utilization and memory through NVML (nvidia-ml-py), for the metrics exporter; None without a GPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuStats:
    """One GPU's state at the moment of the call."""

    #: NVML device index.
    index: int
    #: Product name, e.g. "NVIDIA H100 80GB HBM3".
    name: str
    #: Percent of the last sample period a kernel was running.
    utilization_percent: float
    #: Device memory in use and in total, bytes.
    memory_used_bytes: int
    memory_total_bytes: int


def _nvml() -> Any:
    import pynvml  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return pynvml


def gpu_stats() -> list[GpuStats] | None:
    """Stats for every visible GPU, or None when NVML, its driver library or a GPU is missing."""
    try:
        nvml = _nvml()
        nvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when there is no driver: both just mean "no GPU"
        return None
    try:
        stats = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            stats.append(GpuStats(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                utilization_percent=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
            ))
        return stats or None
    except Exception:  # a GPU falling off the bus must not break a metrics scrape
        return None
    finally:
        nvml.nvmlShutdown()
