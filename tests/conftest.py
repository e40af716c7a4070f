"""Session-wide fixtures: converted model directories (tiny random BERTs, and the real MiniLM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from millibatch.engines.convert.convert import ConvertOptions, convert
from millibatch.engines.convert.validate import default_stsb_path
from tests.helpers import make_tiny_checkpoint

# Keep thread pools small: CI has 2 cores and tests run servers and references side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-embed")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", "embed")
    out = root / "model"
    convert(ConvertOptions(source=str(checkpoint), output=out, task="embed", name="tiny-embed"),
            progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_classify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-classify")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", "classify")
    out = root / "model"
    convert(ConvertOptions(source=str(checkpoint), output=out, task="classify", name="tiny-classify"),
            progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 converted once per session (about 20 s on 2 cores)."""
    out = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    convert(ConvertOptions(source="all-MiniLM-L6-v2", output=out), progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def stsb_path() -> Path:
    path = default_stsb_path()
    if path is None:
        pytest.skip("STS-B data (../shared/data/stsb-test.tsv) not found")
    return path
