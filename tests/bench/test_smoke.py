"""The benchmark harness end to end against millibatch only (a tiny model, a few seconds), and the load
generator's error accounting against a port where nothing listens."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadgen import GcPauses, bucket_length
from bench.processes import free_port
from bench.texts import DEFAULT_STSB, stsb_sentences, text_set

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("matplotlib", reason="the bench extra (matplotlib) is not installed")
pytest.importorskip("psutil", reason="the bench extra (psutil) is not installed")


def bench_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.timeout(90)
def test_quick_run_against_millibatch_writes_table_and_plots(tiny_embed_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--peers", "millibatch", "--duration", "1",
         "--pinning", "shared", "--model-dir", str(tiny_embed_dir), "--out", str(out)],
        cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=80, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    data = json.loads((out / "results.json").read_text())
    assert data["skipped"] == {}
    assert [(p["mode"], p["concurrency"]) for p in data["phases"]] == [("closed", 1), ("closed", 32), ("open", 0)]
    for phase in data["phases"]:
        assert phase["peer"] == "millibatch"
        assert phase["errors"] == 0, phase["error_kinds"]
        assert phase["ok"] > 0 and phase["throughput_rps"] > 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"]
        raw = json.loads((out / "raw" / phase["raw"]).read_text())
        assert len(raw["latencies_ms"]) == phase["ok"]
    table = (out / "RESULTS.md").read_text()
    assert "| millibatch |" in table
    for name in ("latency_vs_throughput.png", "latency_cdf.png", "open_loop.png", "results.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.timeout(30)
def test_loadgen_counts_errors_instead_of_hanging(tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["hello"]))
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--protocol", "millibatch", "--target", f"127.0.0.1:{free_port()}",
         "--texts", str(texts), "--mode", "open", "--rate", "20", "--duration", "0.5", "--warmup", "0",
         "--timeout", "0.5", "--out", str(out), "--records", str(tmp_path / "calls.json")],
        cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=25, check=False)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(out.read_text())
    assert result["ok"] == 0
    assert result["errors"] == result["requests"] > 0
    assert set(result["error_kinds"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    calls = json.loads((tmp_path / "calls.json").read_text())
    assert len(calls) == result["requests"]
    assert all(status in result["error_kinds"] and 0 <= ms < 5000 for status, ms in calls)
    assert result["client_gc_pauses"] >= 0 and result["client_gc_max_ms"] >= 0


def test_the_load_generator_times_its_own_garbage_collections() -> None:
    with GcPauses() as pauses:
        garbage = [[i] for i in range(100_000)]  # many objects for the collector to walk
        gc.collect()
        del garbage
    assert pauses.count >= 1 and pauses.longest > 0
    counted = pauses.count
    gc.collect()
    assert pauses.count == counted  # no longer counting once the phase is over


def test_text_sets_and_token_buckets(stsb_path: Path) -> None:
    sentences = stsb_sentences(stsb_path)
    assert DEFAULT_STSB.name == stsb_path.name
    assert len(text_set("sts", sentences)) == len(sentences)
    long = text_set("long", sentences)
    assert len(long) == len(sentences) // 10 and long[0].startswith(sentences[0])
    assert [bucket_length(n, 256) for n in (1, 16, 17, 100, 300)] == [16, 16, 32, 128, 256]
    with pytest.raises(ValueError, match="unknown text set"):
        text_set("poems", sentences)
