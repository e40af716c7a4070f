"""`millibatch serve` as a user runs it: a real process, SERVING via health, SIGTERM exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from millibatch.client import Client
from tests.helpers import free_port, wait_serving

REPO = Path(__file__).resolve().parents[2]


def test_serve_from_config_file_and_env_then_sigterm(tiny_embed_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "millibatch.toml"
    config.write_text(f'models = ["{tiny_embed_dir}"]\nport = 1\nmax_inputs_per_request = 3\n')
    env = {**os.environ, "PYTHONPATH": str(REPO), "MILLIBATCH_METRICS_PORT": "0", "MILLIBATCH_HTTP_PORT": "0",
           "MILLIBATCH_PROFILE_ON_START": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "millibatch", "serve", "--config", str(config), "--port", str(port),
         "--host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_serving(port)
        with Client(f"127.0.0.1:{port}") as client:
            assert len(client.embed(["a", "b", "c"])) == 3  # config file applies (limit 3)
            try:
                client.embed(["a"] * 4)
                raise AssertionError("limit from the config file not applied")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read() if process.stdout else ""
        assert "draining" in output and "stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_unusable_engine_fails_start_up_with_one_clear_line(tiny_embed_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "millibatch", "serve", "--model", str(tiny_embed_dir), "--port", "0",
         "--metrics-port", "0", "--http-port", "0", "--engine", "tensorrt"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "start-up failed" in result.stderr and "tensorrt" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_reported_not_raised() -> None:
    result = subprocess.run([sys.executable, "-m", "millibatch", "serve", "--port", "99999"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "bad settings" in result.stderr and "Traceback" not in result.stderr
