"""bench.client_throttle end to end: every variant calls a real grpc.aio echo server, and the report has
a line for each with what it adds to the plain client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.client_throttle import VARIANTS

ROOT = Path(__file__).resolve().parents[2]


def test_every_variant_is_timed_beside_the_plain_client(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.client_throttle", "--rounds", "2", "--calls", "20", "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
        check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rounds = json.loads((tmp_path / "results.json").read_text())["rounds"]
    assert list(rounds) == list(VARIANTS)
    for name, rows in rounds.items():
        assert len(rows) == 2, name
        assert all(0 < row["p50_ms"] <= row["p99_ms"] < 1000 and row["client_cpu_us_per_call"] > 0 for row in rows)
    table = (tmp_path / "results.md").read_text()
    for name in VARIANTS:
        line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert line.rstrip(" |").split("|")[-1].strip().startswith(("+", "-")) is ("+" in name), line
