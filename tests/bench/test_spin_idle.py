"""bench.spin_idle on a tiny model: both spinning choices at each gap, in every round, written out."""

from __future__ import annotations

import json
from pathlib import Path

from bench.spin_idle import main


def test_both_choices_are_timed_at_every_gap_and_round(tiny_embed_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "spin"
    assert main(["--model", str(tiny_embed_dir), "--gaps-ms", "0", "2", "--runs", "3", "--rounds", "2",
                 "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    seen = {(r["gap_ms"], r["round"], r["choice"]) for r in record["results"]}
    assert seen == {(g, n, c) for g in (0.0, 2.0) for n in (1, 2) for c in ("auto", "always")}
    assert all(r["p50_ms"] > 0 and r["process_cores"] >= 0 for r in record["results"])
    table = (out / "results.md").read_text()
    assert table.count("\n| 2 |") == 2 and "always p50 ms" in table
