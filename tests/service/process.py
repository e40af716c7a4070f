"""A real `millibatch serve` subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve_process(
    model: Path, *flags: str, start_timeout: float = 120, log_sink: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start the server, wait for its "serving on port N" line, yield (process, port); kill it if still alive.
    The HTTP door is off unless `flags` set --http-port.
    With `log_sink`, the server's log lines (stderr) are appended to it when the process has ended."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "millibatch", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", "0", "--metrics-port", "0", "--http-port", "0", "--no-profile-on-start", *flags]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            port = 0
            ends = time.monotonic() + start_timeout
            assert process.stdout is not None
            while time.monotonic() < ends:
                line = process.stdout.readline()
                if not line:
                    break
                if line.startswith("millibatch serving on port"):
                    port = int(line.split()[-1])
                    break
            if not port:
                errors.seek(0)
                raise RuntimeError(f"server did not start: {errors.read()[-2000:]}")
            yield process, port
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
            if log_sink is not None:
                errors.seek(0)
                log_sink.extend(errors.read().splitlines())
