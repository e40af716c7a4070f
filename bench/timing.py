"""Small pieces the one-shot benchmark scripts share: interleaved timing and result tables."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def interleaved(runs: Mapping[Key, Callable[[], object]], calls: int) -> dict[Key, list[float]]:
    """Seconds per call of each candidate: one untimed call each, then `calls` rounds that run every
    candidate in turn (A, B, C, A, B, C, ...), so a busy machine slows all of them alike."""
    for run in runs.values():
        run()
    times: dict[Key, list[float]] = {key: [] for key in runs}
    for _ in range(calls):
        for key, run in runs.items():
            started = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - started)
    return times


def write_table(out: Path, caption: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table under a caption that names the date (UTC) and machine; printed and written to `out`."""
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}: {caption}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
