"""bench/stats.py: the one place benchmark percentiles come from."""

from __future__ import annotations

import math
import statistics

from bench.stats import median, p99_with_failures, percentile, summarize


def test_percentiles_interpolate_and_median_is_the_usual_one() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert median(values) == statistics.median(values) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(list(range(101)), 99) == 99.0
    assert math.isnan(percentile([], 50))


def test_summary_of_values_and_of_none() -> None:
    summary = summarize([1.0, 2.0, 3.0])
    assert (summary.count, summary.mean, summary.p50, summary.max) == (3, 2.0, 2.0, 3.0)
    empty = summarize([])
    assert empty.count == 0 and math.isnan(empty.p99)


def test_p99_counts_failures_as_infinitely_slow() -> None:
    ok = [float(v) for v in range(1, 1001)]
    assert p99_with_failures(ok, 0) == 991.0  # an observed value, not an interpolated 990.01
    assert p99_with_failures(ok, 5) == 995.0  # 0.5% failed: p99 is still an answered call, a later one
    assert p99_with_failures(ok, 20) is None  # 2% failed: p99 is a failure
    assert p99_with_failures([], 0) is None
