"""Render the settings reference (README "Configuration") from the Settings class itself."""

from __future__ import annotations

import sys
from pathlib import Path

from millibatch.settings import Settings


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


def rewrite_readme(path: Path) -> None:
    """Replace the table between the settings markers in `path`."""
    text = path.read_text()
    begin, end = "<!-- settings:begin -->\n", "<!-- settings:end -->"
    head, rest = text.split(begin, 1)
    path.write_text(head + begin + settings_table() + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        rewrite_readme(Path(sys.argv[2]))
    else:
        print(settings_table(), end="")
