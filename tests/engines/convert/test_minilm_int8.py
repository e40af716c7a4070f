"""The real all-MiniLM-L6-v2 in int8: STS-B within 0.3 of PyTorch's and cosine ≥ 0.99 to fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from millibatch.engines.convert.convert import ConvertOptions, convert

#: PyTorch's STS-B Spearman for all-MiniLM-L6-v2 (bench/convert_variants.py reproduces it).
PYTORCH_STSB = 82.05


@pytest.mark.slow
def test_minilm_int8_keeps_stsb_and_direction(tmp_path: Path, stsb_path: Path) -> None:
    manifest = convert(
        ConvertOptions(source="all-MiniLM-L6-v2", output=tmp_path / "int8", precision="int8", stsb=stsb_path),
        progress=lambda _: None,
    )
    validation = manifest.validation
    assert validation["mean_cosine"] >= 0.99, validation
    # convert scores PyTorch itself on the same pairs; it must reproduce the published figure.
    assert abs(validation["stsb_spearman_pytorch"] - PYTORCH_STSB) <= 0.01, validation
    assert abs(validation["stsb_spearman"] - PYTORCH_STSB) <= 0.3, validation
    assert manifest.optimizations["fusion"]["Attention"] == 6


@pytest.mark.slow
def test_minilm_static_int8_for_gpus_keeps_stsb(tmp_path: Path, stsb_path: Path) -> None:
    # Plain MinMax QDQ over every MatMul fails validation on this model (mean cosine 0.82-0.89);
    # SmoothQuant plus fp32 FFN outputs is what makes the TensorRT-style int8 graph usable.
    manifest = convert(
        ConvertOptions(source="all-MiniLM-L6-v2", output=tmp_path / "qdq", precision="int8", device="cuda",
                       stsb=stsb_path),
        progress=lambda _: None,
    )
    validation = manifest.validation
    assert manifest.optimizations["quantization"]["smoothed_matmuls"] == 30
    assert validation["mean_cosine"] >= 0.99, validation
    assert abs(validation["stsb_spearman"] - PYTORCH_STSB) <= 0.3, validation
