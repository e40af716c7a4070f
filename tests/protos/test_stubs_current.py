"""The committed stubs match the .proto files (regenerate with `make protos`)."""

from __future__ import annotations

from pathlib import Path

from protos.generate import REPO_ROOT, generate, proto_files


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    assert len(proto_files()) >= 2
    for relative in generated:
        committed = REPO_ROOT / relative
        assert committed.is_file(), f"{relative} is not committed; run `make protos`"
        assert committed.read_text() == (tmp_path / relative).read_text(), f"{relative} is stale; run `make protos`"
