"""How benchmark processes are started (bench/processes.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.processes import ROOT, checkouts, cpu_ticks, stolen_share, with_python_path


def test_child_python_path_puts_the_checkout_first_and_keeps_the_inherited(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/site", "", "/opt/more"]))
    assert with_python_path(tmp_path) == os.pathsep.join([str(tmp_path), "/opt/site", "/opt/more"])
    monkeypatch.delenv("PYTHONPATH")
    assert with_python_path(tmp_path) == str(tmp_path)


STAT = """cpu  300 0 60 900 10 0 5 25 0 0
cpu0 100 0 20 300 4 0 2 20 7 0
cpu1 200 0 40 600 6 0 3 5 0 0
intr 12345 0 0

ctxt 999
"""


def test_stolen_time_is_read_for_the_named_cores_only() -> None:
    # cpu0: 100 + 20 + 300 + 4 + 2 + 20 = 446 ticks, 20 stolen (guest time is already counted in user).
    assert cpu_ticks({0}, STAT) == (20, 446)
    assert cpu_ticks({0, 1}, STAT) == (25, 446 + 854)
    assert cpu_ticks({7}, STAT) == (0, 0)
    assert stolen_share((20, 446), (70, 946)) == pytest.approx(0.1)
    assert stolen_share((20, 446), (20, 446)) is None


def test_this_machines_stolen_time_is_a_share_of_its_time() -> None:
    before = cpu_ticks(os.sched_getaffinity(0))
    if before == (0, 0):
        pytest.skip("no /proc/stat here")
    after = before
    while after[1] == before[1]:  # wait for the next tick
        after = cpu_ticks(os.sched_getaffinity(0))
    share = stolen_share(before, after)
    assert share is not None and 0.0 <= share <= 1.0


def test_baseline_checkouts_hold_the_ref_with_this_venv_and_are_removed_on_exit() -> None:
    with checkouts(["HEAD"], "test-checkouts-") as trees:
        tree = trees["HEAD"]
        assert (tree / "bench" / "processes.py").is_file()
        assert (tree / ".venv").resolve() == (ROOT / ".venv").resolve()
    assert not tree.exists()
