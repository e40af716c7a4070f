"""Small pieces the one-shot benchmark scripts share: interleaved timing and result tables."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

# convert's quick benchmark owns the interleaved timer (it ships in the package; bench/ does not).
from millibatch.engines.convert.quick_bench import interleaved

__all__ = ["interleaved", "write_table"]


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
