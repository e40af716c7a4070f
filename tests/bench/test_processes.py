"""How benchmark processes are started (bench/processes.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.processes import with_python_path


def test_child_python_path_puts_the_checkout_first_and_keeps_the_inherited(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/site", "", "/opt/more"]))
    assert with_python_path(tmp_path) == os.pathsep.join([str(tmp_path), "/opt/site", "/opt/more"])
    monkeypatch.delenv("PYTHONPATH")
    assert with_python_path(tmp_path) == str(tmp_path)
