"""bench.frontend's modes: each with or without gRPC's EventEngine."""

from __future__ import annotations

import pytest

from bench.frontend import MODES, base_mode, main


def test_the_event_engine_suffix_names_the_same_mode() -> None:
    assert base_mode("refused+ee") == "refused"
    assert [base_mode(mode) for mode in MODES] == list(MODES)


def test_serve_refuses_an_unknown_mode() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--mode", "fast+ee"])
    assert exited.value.code == 2
