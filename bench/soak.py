"""Soak: a real `millibatch serve` process under a steady request rate; prints server RSS and latency per
interval. Not run in CI.

    .venv/bin/python bench/soak.py MODEL_DIR --duration 120 --rate 50 --interval 10

Each interval is one open-loop run of the load generator (bench/loadgen.py, its own process, a fresh
connection each time) at --rate calls/s, one short text per call; the server's RSS is read after it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.processes import rss_mib, run_loadgen, running_server, serve_launch

#: Distinct texts the calls cycle through (at random), so no two neighbouring calls need be alike.
TEXTS = 1000


def soak(model: Path, duration: float, rate: float, interval: float) -> None:
    """Serve `model` and load it for `duration` s, one report line per `interval` s."""
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "texts.json"
        texts.write_text(json.dumps([f"soak request number {i}" for i in range(TEXTS)]))
        spec = serve_launch(model, ["--no-profile-on-start"], env={"OMP_NUM_THREADS": "1"})
        with running_server(spec, texts) as server:
            flags = ["--mode", "open", "--rate", str(rate), "--duration", str(interval), "--warmup", "0",
                     "--timeout", "5"]
            print(f"{'t_s':>6} {'rss_mib':>8} {'calls':>6} {'errors':>6} {'p50_ms':>7} {'p99_ms':>7}")
            print(f"{0:6.0f} {rss_mib(server.process.pid):8.1f}")
            begin = time.perf_counter()
            for _ in range(max(1, int(duration // interval))):
                result = run_loadgen(server.launch, None, texts, flags, Path(tmp) / "interval.json", interval + 60)
                assert result is not None
                print(f"{time.perf_counter() - begin:6.0f} {rss_mib(server.process.pid):8.1f} {result['ok']:6d} "
                      f"{result['errors']:6d} {result['p50_ms']:7.1f} {result['p99_ms']:7.1f}", flush=True)


def main() -> None:
    """Parse arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model directory from `millibatch convert`")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per report line")
    args = parser.parse_args()
    soak(args.model, args.duration, args.rate, args.interval)


if __name__ == "__main__":
    main()
