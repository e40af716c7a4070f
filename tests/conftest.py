"""Session-wide fixtures: converted model directories (tiny random BERTs, and the real MiniLM)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from millibatch.settings import Settings, apply_grpc_experiments

# In-process servers get gRPC set up as `millibatch serve` sets it up; grpc reads this when first imported.
apply_grpc_experiments(Settings())

from millibatch.engines.convert.convert import ConvertOptions, convert  # noqa: E402
from millibatch.engines.convert.validate import default_stsb_path  # noqa: E402
from millibatch.engines.model_dir import Manifest  # noqa: E402
from tests.helpers import make_tiny_checkpoint, make_tiny_mlm_checkpoint  # noqa: E402

#: The prompts of the `tiny-prompted` model (a copy of tiny-embed with sentence-transformers-style prompts).
TINY_PROMPTS = {"query": "query: ", "passage": "passage: "}

# Keep thread pools small: CI has 2 cores and tests run servers and references side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def converted_tiny(factory: pytest.TempPathFactory, name: str, task: str, checkpoint: Callable[[Path], Path]) -> Path:
    """A tiny random checkpoint, made by `checkpoint` in a fresh folder, converted as model `name`."""
    root = factory.mktemp(name)
    out = root / "model"
    convert(ConvertOptions(source=str(checkpoint(root / "checkpoint")), output=out, task=task, name=name),
            progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_tiny(tmp_path_factory, "tiny-embed", "embed", lambda f: make_tiny_checkpoint(f, "embed"))


@pytest.fixture(scope="session")
def tiny_classify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_tiny(tmp_path_factory, "tiny-classify", "classify", lambda f: make_tiny_checkpoint(f, "classify"))


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder with one label (a single relevance logit), as ms-marco rerankers are."""
    return converted_tiny(tmp_path_factory, "tiny-reranker", "classify",
                          lambda f: make_tiny_checkpoint(f, "classify", labels=["LABEL_0"]))


@pytest.fixture(scope="session")
def tiny_sparse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random masked-LM converted with --task sparse-embed (SPLADE)."""
    return converted_tiny(tmp_path_factory, "tiny-sparse", "sparse-embed", make_tiny_mlm_checkpoint)


@pytest.fixture(scope="session")
def tiny_prompted_dir(tiny_embed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-embed served as `tiny-prompted`, with TINY_PROMPTS and "query" as its default prompt."""
    out = tmp_path_factory.mktemp("tiny-prompted") / "model"
    shutil.copytree(tiny_embed_dir, out)
    manifest = Manifest.load(out)
    manifest.name, manifest.prompts, manifest.default_prompt_name = "tiny-prompted", dict(TINY_PROMPTS), "query"
    manifest.save(out)
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
