"""Settings precedence: CLI flag > MILLIBATCH_* env var > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from millibatch.cli import build_parser
from millibatch.settings import EVENT_ENGINE_EXPERIMENTS, Settings, apply_grpc_experiments, load_settings


def test_precedence_cli_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('port = 1111\nmax_batch_rows = 7\nmax_delay_ms = 3.5\nmodels = ["/m1", "/m2"]\n')
    monkeypatch.setenv("MILLIBATCH_MAX_BATCH_ROWS", "9")
    monkeypatch.setenv("MILLIBATCH_API_KEYS", "k1, k2")
    args = build_parser().parse_args(["serve", "--config", str(config), "--max-delay-ms", "1.25", "--no-reflection"])
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    settings = load_settings(overrides, args.config)
    assert settings.port == 1111  # file
    assert settings.max_batch_rows == 9  # env beats file
    assert settings.max_delay_ms == 1.25  # flag beats file
    assert settings.reflection is False
    assert settings.models == ["/m1", "/m2"]
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(settings)  # secrets never print
    assert settings.metrics_port == 9095  # default


def test_repeated_model_flags_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--model", "a", "--model", "b", "--port", "0"])
    assert load_settings({k: v for k, v in vars(args).items() if k not in ("command", "config")}).models == ["a", "b"]
    with pytest.raises(ValidationError):
        load_settings({"port": "70000"})
    with pytest.raises(ValidationError):
        load_settings({"no_such_setting": 1})


def test_every_setting_is_documented() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing


def test_http_port_defaults_to_8080_and_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().http_port == 8080
    monkeypatch.setenv("MILLIBATCH_HTTP_PORT", "0")
    assert load_settings().http_port == 0
    args = build_parser().parse_args(["serve", "--http-port", "9000"])
    assert load_settings({k: v for k, v in vars(args).items() if k not in ("command", "config")}).http_port == 9000
    with pytest.raises(ValidationError):
        load_settings({"http_port": 70000})


def test_grpc_experiments_follow_the_setting_unless_the_operator_set_them() -> None:
    environ: dict[str, str] = {}
    value = apply_grpc_experiments(Settings(), environ)
    assert value == environ["GRPC_EXPERIMENTS"] == ",".join(f"-{name}" for name in EVENT_ENGINE_EXPERIMENTS)
    environ = {}
    assert apply_grpc_experiments(Settings(grpc_event_engine=True), environ) == "" and not environ
    environ = {"GRPC_EXPERIMENTS": "event_engine_listener"}
    assert apply_grpc_experiments(Settings(), environ) == "event_engine_listener"
    assert environ == {"GRPC_EXPERIMENTS": "event_engine_listener"}
