"""The sustained-overload benchmark end to end on the tiny model: every call the client made is one the
server finished, and the report says so; a variant runs as a server of its own, interval by interval, and
so do a client that throttles itself and one that calls through the HTTP door."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("psutil", reason="the bench extra (psutil) is not installed")


@pytest.mark.timeout(150)
def test_every_call_is_accounted_for_through_answers_and_refusals(tiny_embed_dir: Path, stsb_path: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "sustained"
    # 200 calls/s into a queue of two rows that always waits 20 ms for company: most calls are refused.
    completed = subprocess.run(
        [sys.executable, "-m", "bench.sustained", "--peak", "100", "--multiple", "2", "--minutes", "0.1",
         "--interval", "3", "--server-args", "--batch-policy fifo --max-delay-ms 20 --max-queue-rows 2",
         "--variant", "roomier=--max-queue-rows 6", "--variant", "millibatch-http+door=", "--throttled",
         "--model-dir", str(tiny_embed_dir), "--stsb", str(stsb_path), "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, capture_output=True,
        text=True, timeout=140, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    peers = json.loads((out / "results.json").read_text())["peers"]
    assert list(peers) == ["millibatch", "millibatch+roomier", "millibatch-http+door", "millibatch-throttled"]
    assert "--max-queue-rows 6" in " ".join(peers["millibatch+roomier"]["command"])
    # The roomier queue admits more of each moment's arrivals: fewer refusals, on its own server.
    assert (peers["millibatch+roomier"]["client_codes"].get("RESOURCE_EXHAUSTED", 0)
            < peers["millibatch"]["client_codes"]["RESOURCE_EXHAUSTED"])
    assert peers["millibatch+roomier"]["server_finished"] == peers["millibatch+roomier"]["client_calls"]
    data = peers["millibatch"]
    assert len(data["intervals"]) == 2
    assert data["client_calls"] > 500
    assert data["server_finished"] == data["client_calls"]
    assert data["client_codes"]["OK"] > 0
    assert data["client_codes"].get("RESOURCE_EXHAUSTED", 0) > data["client_calls"] / 4, data["client_codes"]
    assert data["server_codes"] == {code: float(count) for code, count in data["client_codes"].items() if count}
    assert "throttled" not in data["client_codes"]
    for row in data["intervals"]:
        assert row["other"] == {}
        assert row["rss_mib"] > 0
        # A queue that refuses by count, not by cost: the texts answered are as long as those sent.
        assert 0.7 < row["ok_length"] < 1.3
    # A client that throttles itself keeps most refusals off the server, and every call it sent is accounted for.
    throttled = peers["millibatch-throttled"]
    assert throttled["client_codes"].get("throttled", 0) > throttled["client_calls"] / 4, throttled["client_codes"]
    codes = throttled["client_codes"]
    accepted = codes["OK"] + codes.get("DEADLINE_EXCEEDED", 0)
    # The server is sent about twice what it accepts (the multiplier), where the plain client sends it all.
    assert throttled["client_calls"] < 2.5 * accepted, codes
    assert codes.get("RESOURCE_EXHAUSTED", 0) < 0.8 * data["client_codes"]["RESOURCE_EXHAUSTED"], (codes, data)
    assert throttled["server_finished"] == throttled["client_calls"]
    assert all(row["other"] == {} for row in throttled["intervals"])
    # Through the HTTP door: its 429s count as refusals, and the server's count is of the door's calls.
    door = peers["millibatch-http+door"]
    assert door["client_codes"].get("http-429", 0) > door["client_calls"] / 4, door["client_codes"]
    assert door["server_finished"] == door["client_calls"]
    assert door["server_codes"].get("RESOURCE_EXHAUSTED") == door["client_codes"]["http-429"]
    assert all(row["other"] == {} and row["refused"] > 0 and row["refusal_p99_ms"] for row in door["intervals"])
    table = (out / "results.md").read_text()
    assert table.count("difference 0.") == 4
    assert "**millibatch+roomier against millibatch, interval by interval:** goodput ratio median" in table
    # Every server against each listed before it; and --report writes the same page again from results.json.
    assert "**millibatch-throttled against millibatch+roomier, interval by interval:**" in table
    (out / "results.md").unlink()
    rendered = subprocess.run([sys.executable, "-m", "bench.sustained", "--report", str(out / "results.json")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert rendered.returncode == 0, rendered.stderr
    assert (out / "results.md").read_text() == table
