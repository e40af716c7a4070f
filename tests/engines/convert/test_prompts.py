"""convert carries sentence-transformers' prompts into the manifest; the manifest resolves a request's prompt."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from millibatch.engines.convert.convert import ConvertOptions, convert
from millibatch.engines.convert.sources import resolve
from millibatch.engines.model_dir import MANIFEST_NAME, Manifest
from millibatch.errors import InvalidInput
from tests.helpers import make_tiny_checkpoint, minilm_source

PROMPTS = {"query": "query: ", "document": ""}


def write_st_config(folder: Path, **config: object) -> None:
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))


def bare_checkpoint(folder: Path) -> Path:
    """Just what resolve reads (no weights): enough to test the config parsing."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    shutil.copyfile(minilm_source() / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_convert_records_the_prompts(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "embed")
    write_st_config(checkpoint, prompts=PROMPTS, default_prompt_name="query", similarity_fn_name="cosine")
    convert(ConvertOptions(source=str(checkpoint), output=tmp_path / "model", validation_rows=4),
            progress=lambda _: None)
    manifest = Manifest.load(tmp_path / "model")
    assert (manifest.prompts, manifest.default_prompt_name) == (PROMPTS, "query")


def test_a_checkpoint_without_the_config_has_no_prompts(tmp_path: Path) -> None:
    source = resolve(str(bare_checkpoint(tmp_path / "plain")))
    assert (source.prompts, source.default_prompt_name) == ({}, "")
    write_st_config(tmp_path / "plain", prompts={}, default_prompt_name=None)  # as sentence-transformers saves it
    assert resolve(str(tmp_path / "plain")).prompts == {}


def test_a_default_prompt_that_is_not_among_the_prompts_is_refused(tmp_path: Path) -> None:
    checkpoint = bare_checkpoint(tmp_path / "bad")
    write_st_config(checkpoint, prompts=PROMPTS, default_prompt_name="passage")
    with pytest.raises(ValueError, match="default_prompt_name 'passage' is not one of its prompts"):
        resolve(str(checkpoint))
    write_st_config(checkpoint, prompts={"query": 3})
    with pytest.raises(ValueError, match="prompts must map names to strings"):
        resolve(str(checkpoint))


def test_old_manifests_load_without_prompts(tmp_path: Path, tiny_embed_dir: Path) -> None:
    raw = json.loads((tiny_embed_dir / MANIFEST_NAME).read_text())
    for key in ("prompts", "default_prompt_name"):
        del raw[key]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    old = Manifest.load(tmp_path)
    assert (old.prompts, old.default_prompt_name) == ({}, "")
    assert old.prompt_text() == ""


def test_prompt_text_follows_sentence_transformers(tiny_embed_dir: Path) -> None:
    manifest = dataclasses.replace(Manifest.load(tiny_embed_dir), prompts=PROMPTS, default_prompt_name="query")
    assert manifest.prompt_text() == "query: "  # nothing asked: the default prompt
    assert manifest.prompt_text("document") == ""
    assert manifest.prompt_text(prompt="Represent this: ") == "Represent this: "
    assert manifest.prompt_text(prompt="") == ""  # an explicit empty prompt turns the default off
    with pytest.raises(InvalidInput, match="no prompt named 'passage' \\(its prompts: document, query\\)"):
        manifest.prompt_text("passage")
    with pytest.raises(InvalidInput, match="mutually exclusive"):
        manifest.prompt_text("query", "x")
