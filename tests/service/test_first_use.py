"""A packaged model named at start-up is converted once, in a child process: the serving process never
imports torch or transformers, and keeps the memory of a server, not of a converter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import asyncio, json, sys
from millibatch.service.server import InferenceServer
from millibatch.settings import load_settings

async def main():
    settings = load_settings({"models": ["all-MiniLM-L6-v2"], "cache_dir": sys.argv[1], "host": "127.0.0.1",
                              "port": 0, "metrics_port": 0, "profile_on_start": False})
    server = InferenceServer(settings)
    await server.start()
    model = server.plane.model("")
    done = await server.plane.compute_texts(model, ["a first request"], truncate=True,
                                            deadline=server.plane.deadline(10))
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    print(json.dumps({"heavy": sorted(m for m in ("torch", "transformers", "onnx") if m in sys.modules),
                      "rss_mb": rss / 1024, "dimensions": len(done.results[0].get("embeddings"))}))
    await server.stop()

asyncio.run(main())
"""


@pytest.mark.slow
def test_first_use_conversion_runs_in_a_child_and_the_server_never_imports_torch(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cache")], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nfirst use: {report}")
    assert report["heavy"] == []
    assert report["dimensions"] == 384
    assert (tmp_path / "cache" / "all-MiniLM-L6-v2" / "manifest.json").is_file()
    # A server of MiniLM holds about 0.4 GB; with torch imported for the conversion it kept 1.2 GB.
    assert report["rss_mb"] < 800
