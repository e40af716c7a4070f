"""`millibatch convert` from the command line: tables for people on stderr, one JSON document on stdout,
and --benchmark timing the variant beside fp32 and PyTorch into the manifest."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from millibatch import cli
from millibatch.engines.convert.convert import variant_label
from millibatch.engines.model_dir import Manifest
from tests.helpers import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_int8_with_benchmark_prints_tables_and_records_the_timings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "embed")
    out = tmp_path / "int8"
    code = cli.main(["convert", str(checkpoint), "-o", str(out), "--precision", "int8", "--benchmark",
                     "--benchmark-threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    assert "| mean cosine |" in captured.err and "≥ 0.98" in captured.err
    assert "| variant | 1x16 | 1x64 | 32x64 |" in captured.err  # tokens capped at the tiny model's 64
    assert "| int8 |" in captured.err and "| pytorch |" in captured.err

    manifest = Manifest.load(out)
    assert manifest.benchmark == printed["benchmark"]
    assert manifest.benchmark["threads"] == 1
    for medians in manifest.benchmark["median_ms"].values():
        assert set(medians) == {"pytorch", "fp32", "int8"} and min(medians.values()) > 0
    # The plain export it was timed against is not left in the directory.
    assert {p.name for p in out.iterdir()} == {"manifest.json", "model.onnx", "tokenizer.json"}


def test_variant_labels() -> None:
    def manifest(precision: str, fusion: dict[str, int]) -> Manifest:
        return Manifest(name="m", task="embed", max_length=8, dimensions=4, input_names=[], output_names=[],
                        precision=precision, optimizations={"fusion": fusion} if fusion else {})

    assert variant_label(manifest("fp32", {"Attention": 2})) == "fp32-fused"
    assert variant_label(manifest("fp32", {})) == "fp32"  # the export itself: timed once, as the baseline
    assert variant_label(manifest("int8", {"Attention": 2})) == "int8"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_convert_leaves_nothing_behind(tmp_path: Path, stop: signal.Signals) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "embed")
    out = tmp_path / "models" / "tiny"
    process = subprocess.Popen(
        [sys.executable, "-m", "millibatch", "convert", str(checkpoint), "-o", str(out), "--benchmark"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # stop it mid-run: once the model is built and being timed
        seen.append(line)
        if "quick benchmark on CPU" in line:
            process.send_signal(stop)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, "".join(seen) + rest
    assert "was not written" in rest
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == [], "no staging folder left behind"
