"""convert: manifest contents, atomic output, refusal to overwrite, loud failure on disagreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from millibatch.engines.convert import convert as convert_module
from millibatch.engines.convert.convert import ConversionError, ConvertOptions, convert
from millibatch.engines.model_dir import Manifest
from tests.helpers import TINY_LABELS, make_tiny_checkpoint


def test_manifest_describes_the_model(tiny_embed_dir: Path, tiny_classify_dir: Path) -> None:
    embed = Manifest.load(tiny_embed_dir)
    assert (embed.task, embed.dimensions, embed.pooling, embed.normalize) == ("embed", 32, "mean", True)
    assert embed.output_names == ["embeddings", "pooled"]
    assert embed.source_hash.startswith("sha256:")
    assert embed.validation["min_cosine"] >= 0.9999
    classify = Manifest.load(tiny_classify_dir)
    assert classify.labels == TINY_LABELS and classify.validation["label_agreement"] == 1.0
    for directory in (tiny_embed_dir, tiny_classify_dir):
        assert {p.name for p in directory.iterdir()} == {"manifest.json", "model.onnx", "tokenizer.json"}


def test_existing_output_needs_force(tmp_path: Path, tiny_embed_dir: Path) -> None:
    with pytest.raises(ConversionError, match="already exists"):
        convert(ConvertOptions(source="unused", output=tiny_embed_dir))


def test_disagreement_fails_loudly_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "embed")
    impossible = convert_module.Tolerance(min_cosine=1.0, mean_cosine=1.0, max_abs_diff=-1.0)
    monkeypatch.setitem(convert_module.TOLERANCES, "fp32", impossible)  # nothing can pass
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="disagrees with PyTorch"):
        convert(ConvertOptions(source=str(checkpoint), output=out), progress=lambda _: None)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "no staging folder left behind"


def test_unknown_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder nor a packaged model"):
        convert(ConvertOptions(source=str(tmp_path / "missing"), output=tmp_path / "o"))
