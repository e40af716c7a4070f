"""A model named by package (all-MiniLM-L6-v2) is converted once, on first use, into the cache folder.

Conversion needs torch and transformers; it runs as `millibatch convert` in a child process, so the
serving process never imports them and does not keep their memory for its whole life (about 1.2 GB
RSS after an in-process conversion of MiniLM, against about 0.4 GB for serving alone).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from millibatch.engines.convert.sources import PACKAGED_MODELS
from millibatch.engines.model_dir import is_model_dir
from millibatch.settings import Settings

log = logging.getLogger("millibatch.models")


class FirstUseConversionFailed(RuntimeError):
    """`millibatch convert` of a packaged model failed; its last output lines say why."""


def resolve_model_dir(spec: str, settings: Settings) -> Path:
    """A model directory for `spec`: a directory from `convert`, or a packaged model name converted once
    into the cache folder (blocking; the only step that needs torch, run in a child process)."""
    path = Path(spec).expanduser()
    if is_model_dir(path):
        return path
    if spec not in PACKAGED_MODELS:
        raise FileNotFoundError(f"model {spec!r}: not a model directory (no manifest.json) nor a packaged model")
    cached = settings.cache_dir / spec
    if not is_model_dir(cached):
        log.info("converting %s into %s (first use, in a child process)", spec, cached)
        convert_in_child(spec, cached)
    return cached


def convert_in_child(source: str, output: Path) -> None:
    """Run `millibatch convert SOURCE -o OUTPUT --force` with this interpreter; raise if it fails."""
    command = [sys.executable, "-m", "millibatch", "convert", source, "-o", str(output), "--force"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        raise FirstUseConversionFailed(f"converting {source} failed (exit {completed.returncode}): {tail}")
