"""Render the settings reference (docs/CONFIGURATION.md) from the Settings class itself."""

from __future__ import annotations

import sys
from pathlib import Path

from millibatch.settings import Settings

#: The markers around the generated table in the documentation file.
BEGIN, END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def settings_table() -> str:
    """A markdown table: flag, environment variable, default, meaning."""
    lines = ["| flag / config key | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "[]" if field.default_factory is not None and name != "cache_dir" else field.default
        if name == "cache_dir":
            default = "~/.cache/millibatch"
        description = (field.description or "").replace("\n", " ").replace("|", "\\|")
        lines.append(f"| `--{name.replace('_', '-')}` / `{name}` | `MILLIBATCH_{name.upper()}` | `{default}` | "
                     f"{description} |")
    return "\n".join(lines) + "\n"


def rewrite_table(path: Path) -> None:
    """Replace the table between the settings markers in `path` (docs/CONFIGURATION.md)."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + BEGIN + settings_table() + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        rewrite_table(Path(sys.argv[2]))
    else:
        print(settings_table(), end="")
