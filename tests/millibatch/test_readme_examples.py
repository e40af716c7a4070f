"""The README's Python examples, run as a new user would run them: each block in its own interpreter,
against `millibatch serve` of the real all-MiniLM-L6-v2, printing what the README's comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_serving
from tests.service.process import serve_process

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: A print line's expected output: the comment after it (`print(x)   # 2 384`).
EXPECTED = re.compile(r"^\s*print\(.*\)\s+#\s*(.+?)\s*$")
#: Where the examples call the server, as the README writes it; each block names at least one.
GRPC_ADDRESS = "localhost:50051"
HTTP_URL = "http://localhost:8080/v1"


def readme_examples() -> list[str]:
    return PYTHON_BLOCK.findall(README.read_text())


def expected_output(block: str) -> list[str]:
    return [match.group(1) for line in block.splitlines() if (match := EXPECTED.match(line))]


def test_the_readme_has_runnable_examples_with_their_output() -> None:
    blocks = readme_examples()
    assert len(blocks) >= 3, "README.md: the gRPC, HTTP and KServe V2 examples"
    for block in blocks:
        assert GRPC_ADDRESS in block or HTTP_URL in block, f"an example that calls no server:\n{block}"
        assert expected_output(block), f"an example whose output the README does not show:\n{block}"


@pytest.fixture(scope="module")
def served_minilm(minilm_dir: Path) -> Iterator[tuple[int, int]]:
    """`millibatch serve` of all-MiniLM-L6-v2, once SERVING: gRPC and HTTP ports."""
    http_port = free_port()
    with serve_process(minilm_dir, "--http-port", str(http_port)) as (_, port):
        wait_serving(port)
        yield port, http_port


@pytest.mark.parametrize("block", readme_examples(), ids=lambda block: block.split("\n", 1)[0])
def test_a_readme_example_prints_what_the_readme_says(block: str, served_minilm: tuple[int, int]) -> None:
    port, http_port = served_minilm
    code = block.replace(HTTP_URL, f"http://127.0.0.1:{http_port}/v1").replace(GRPC_ADDRESS, f"127.0.0.1:{port}")
    # Its own interpreter: tritonclient's generated KServe modules cannot share a process with millibatch's.
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, f"README example failed:\n{block}\n{result.stderr}"
    assert result.stdout.splitlines() == expected_output(block)
