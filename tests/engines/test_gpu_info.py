"""NVML stats: a list per GPU, or None on a machine without one."""

from __future__ import annotations

from millibatch.engines import cuda_runtime
from millibatch.engines.gpu_info import gpu_stats


def test_gpu_stats_match_the_machine() -> None:
    stats = gpu_stats()
    if cuda_runtime.device_count() == 0:
        # No driver here: must be None rather than raising, so a metrics scrape never breaks.
        assert stats is None
        return
    assert stats is not None and stats[0].memory_total_bytes > 0
    assert all(0 <= s.utilization_percent <= 100 and s.memory_used_bytes <= s.memory_total_bytes for s in stats)
