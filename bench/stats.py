"""Latency statistics, computed one way for every benchmark: percentiles, medians and summaries.

Percentiles interpolate linearly between neighbouring values (numpy's default), so p50 is the median.
Only numpy is imported: the load generator uses this module from the Triton environment too. `stamp`
says when and where a benchmark ran.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Values = Sequence[float] | np.ndarray


def percentile(values: Values, q: float) -> float:
    """The q-th percentile (0-100) of `values`, in their unit; NaN when there are none."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Values) -> float:
    """The 50th percentile of `values`; NaN when there are none."""
    return percentile(values, 50)


def p99_with_failures(latencies: Values, failures: int) -> float | None:
    """p99 over every call, the `failures` counted as infinitely slow (MLPerf's server-scenario view);
    None when there are no calls or failures reach the top 1% (that p99 is infinite)."""
    if len(latencies) + failures == 0:
        return None
    everything = np.concatenate([np.asarray(latencies, dtype=np.float64), np.full(failures, np.inf)])
    # "higher": an observed value; interpolating towards an infinite one would give inf or NaN.
    value = float(np.percentile(everything, 99, method="higher"))
    return value if np.isfinite(value) else None


@dataclass(frozen=True)
class Summary:
    """One set of latencies at a glance, in their unit (NaN where there are none)."""

    #: How many values.
    count: int
    #: Arithmetic mean.
    mean: float
    #: 50th, 90th and 99th percentiles.
    p50: float
    p90: float
    p99: float
    #: The largest value.
    max: float


def summarize(values: Values) -> Summary:
    """Count, mean, p50/p90/p99 and max of `values`."""
    array = np.asarray(values, dtype=np.float64)
    if not len(array):
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan)
    p50, p90, p99 = (float(v) for v in np.percentile(array, [50, 90, 99]))
    return Summary(len(array), float(array.mean()), p50, p90, p99, float(array.max()))


@dataclass(frozen=True)
class Stamp:
    """When and where a benchmark ran: what every published figure carries beside it."""

    date_utc: str
    commit: str
    cpu: str
    cores: int

    def __str__(self) -> str:
        return f"{self.date_utc} UTC, commit {self.commit}, {self.cpu}, {self.cores} cores"


def stamp() -> Stamp:
    """This run's date (UTC, to the minute), the checkout's commit, the CPU model and the usable cores."""
    from millibatch.engines.convert.quantize import cpuinfo_value

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:  # no git here
        commit = ""
    # A copy of the working tree without .git (a GPU machine's) is told its commit instead.
    commit = commit or os.environ.get("MILLIBATCH_COMMIT", "")
    return Stamp(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"), commit,
                 cpuinfo_value("model name"), len(os.sched_getaffinity(0)))


def publish(out: Path, summary: dict[str, object], lines: list[str], when: Stamp) -> None:
    """Write a benchmark's results.json (`summary` with its date and commit) and results.md (`lines`) to
    `out`, and print the markdown."""
    import json

    record = {"date_utc": when.date_utc, "commit": when.commit, "cpu": when.cpu, "cores": when.cores, **summary}
    (out / "results.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
