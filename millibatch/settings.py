"""Every setting in one typed class. Each is a CLI flag (`--max-batch-rows`), an environment variable
(`MILLIBATCH_MAX_BATCH_ROWS`) and a key in the TOML config file (`max_batch_rows`); the docstring
under each field is the operator's reference (docs/CONFIGURATION.md is generated from it)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# Light modules (the standard library only): importing them here does not import grpc, which must not be
# imported before apply_grpc_experiments.
from millibatch.batching.admission import AdmissionLength
from millibatch.engines.base import SpinningChoice
from millibatch.engines.thread_priority import EnginePriority
from millibatch.service.grpc_poller import PollerPolicy

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "millibatch"


class Settings(BaseSettings):
    """Server settings. Precedence: CLI flag > environment variable > config file > default."""

    model_config = SettingsConfigDict(
        env_prefix="MILLIBATCH_", extra="forbid", validate_default=True, use_attribute_docstrings=True
    )
    _config_file: ClassVar[Path | None] = None

    # -- models ---------------------------------------------------------------------------------
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Model directories (from `millibatch convert`) or packaged model names; comma-separated in the
    environment. Empty: serve all-MiniLM-L6-v2, converted once into `cache_dir`."""
    default_model: str = ""
    """Model used when a request leaves `model` empty; defaults to the first served model."""
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where models named by package are converted to on first use."""

    # -- network --------------------------------------------------------------------------------
    host: str = "[::]"
    """Address the gRPC, HTTP and metrics servers bind to."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port (0 picks a free port, printed at start-up)."""
    metrics_port: int = Field(9095, ge=0, le=65535)
    """Prometheus metrics HTTP port; 0 disables the endpoint."""
    http_port: int = Field(8080, ge=0, le=65535)
    """HTTP port of the OpenAI-compatible door (`/v1/embeddings`, `/v1/rerank`, `/v1/models`, `/health`), on
    `host` with the same TLS, API keys and limits as gRPC (a body over `max_receive_message_bytes` gets
    413); 0 turns it off."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with its own event loop,
    batcher, engine instances, copy of the model and equal share of the cores (CPU affinity; `instances`
    0 then means one per core of that share); a parent process starts them, passes SIGTERM on and
    serves their metrics merged on `metrics_port` (labelled `worker`). One event loop answered about
    2 000 short calls/s on an H100's host, four processes 5 288 (docs/GPU.md): a GPU or a many-core
    machine needs several. The Models service and health answer for the process a connection reached."""
    reuse_port: bool = False
    """Bind the gRPC and HTTP ports with SO_REUSEPORT, so that several servers can share them (set for
    each process by `workers`)."""
    max_receive_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Largest request message accepted; bigger ones get RESOURCE_EXHAUSTED from gRPC."""
    max_send_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest response message sent."""
    max_concurrent_streams: int = Field(8192, ge=1)
    """Concurrent calls per HTTP/2 connection (and calls received but not yet picked up, over all
    connections). Beyond it gRPC itself refuses calls (UNAVAILABLE or CANCELLED) without a reason; below
    it every call reaches admission, which refuses overload with RESOURCE_EXHAUSTED and a message."""
    max_concurrent_calls: int = Field(0, ge=0)
    """gRPC calls in progress at once, counted by gRPC itself before any handler runs: beyond it a call is
    refused with RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") for less than half the CPU an
    admission refusal costs. 0 = no limit: admission alone decides, by deadline. A cap on what a burst of
    long-deadline calls may hold: size it well above millibatch_calls_in_progress at normal peaks (a
    limit tight enough to bind at 100 ms deadlines cost goodput). Its refusals never reach millibatch's
    metrics, and health checks and streams count too: with a limit, probe the HTTP door's /health
    (docs/OVERLOAD.md)."""
    max_connection_age_seconds: float = Field(300.0, ge=0)
    """Connections are closed gracefully after this age so clients rebalance across replicas; 0 = never."""
    reflection: bool = True
    """Serve gRPC server reflection (for grpcurl and similar tools)."""
    grpc_event_engine: bool = False
    """Carry the server's connections on gRPC core's EventEngine, which reads and writes sockets on a
    pool of its own threads. Off: gRPC's poller, which does it on the thread that polls for completions,
    so each call crosses fewer threads: a refused call took 6-13% less CPU and an answered one about 5%
    less, for about 0.25 ms more on a lone call's p50 (docs/CALL_COST.md). Applied through
    GRPC_EXPERIMENTS at start-up, unless that variable is set."""
    grpc_poller_policy: PollerPolicy = "overload"
    """Linux scheduling policy of gRPC's poller thread (with `grpc_event_engine` off). `overload` (the
    default): as gRPC starts it, and SCHED_BATCH with a pacer thread waking every 2.5 ms only while
    admission refuses 50 calls/s or more, back after a second without refusals. Under Poisson overload at
    5x the peak that held 0.86-0.99 of the peak against 0.81-0.86 for `normal` in the same runs, with
    refusals no slower; a lone call never engages it (docs/OVERLOAD.md). `normal`: as gRPC starts it.
    `batch`: SCHED_BATCH always, which also made a lone call's p99 double (docs/CALL_COST.md)."""
    refuse_unread: bool = False
    """While admission refuses 50 calls/s or more (until a second without refusals), serve the compute
    methods of millibatch.v1 (Embed, Rerank, Classify, EmbedSparse, ExtractEntities) so that a call is
    refused before its request is read, from its deadline alone, when even the least request would not
    fit. Only with one served model (a request names its model). Beside a busy engine a refusal of one
    short text took 10% less CPU, but goodput under Poisson overload did not rise in two runs, hence off
    by default (docs/OVERLOAD.md)."""

    # -- engines --------------------------------------------------------------------------------
    engine: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    """Inference backend; `auto` picks the fastest available."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device to run on; `auto` uses a CUDA GPU when one is usable."""
    instances: int = Field(0, ge=0, le=64)
    """Engine instances per model that run batches concurrently. 0 = auto: on CPU one per core (at most
    4; more rows/s under load, slower lone long inputs), on a GPU one."""
    threads_per_instance: int = Field(0, ge=0)
    """CPU threads per ONNX Runtime instance; 0 splits the available cores evenly."""
    cpu_spinning: SpinningChoice = "auto"
    """ONNX Runtime's CPU intra-op threads spin-wait for work while a batch runs and stop when it ends:
    short batches on several threads per instance run about a third faster, for CPU the threads burn
    while the batch runs. `auto`: on when an instance has more than one thread and all instances'
    threads fit the cores (the default one-thread instances have nothing to spin). `always`: ONNX
    Runtime's own default, spinning between batches too, which bought a lone call no reliable gain and
    takes the cores the event loop needs under load (docs/CALL_COST.md)."""
    engine_priority: EnginePriority = "nice"
    """How engine threads stay below the event loop on a shared core. `nice`: instance threads at nice +5,
    and the loop asks for a 0.1 ms time slice (Linux 6.12 and later) so that it preempts them as soon as a
    call arrives: refusals took 3.8-4.8 ms p99 under overload. `idle`: SCHED_IDLE engine threads (ONNX
    Runtime's intra-op threads too): refusals took 1.7-3.6 ms, but the engine gets nothing while any other
    normal-priority thread of the container is runnable; only where the server has its cores to itself
    (docs/OVERLOAD.md)."""
    ort_tensorrt_provider: bool = False
    """On CUDA, run ONNX Runtime through its TensorRT execution provider (engines cached in `cache_dir`)."""
    ort_tensorrt_fp16: bool = False
    """fp16 kernels in ONNX Runtime's TensorRT execution provider."""
    cuda_graphs: bool = True
    """On ONNX Runtime's CUDA provider, capture a CUDA graph per length bucket and row count (powers of two
    up to `max_batch_rows`) at start-up and replay it, rows padded to that count: on an H100 a lone short
    call took 0.3 ms in the engine instead of 0.8-1.2 (docs/GPU.md). Where ONNX Runtime cannot capture a
    model (a node off the CUDA provider), it is served without graphs and the engine's reason says so."""

    # -- batching -------------------------------------------------------------------------------
    batch_policy: Literal["deadline", "fifo"] = "deadline"
    """`deadline`: earliest deadline first, shedding, length grouping, cost-model waits. `fifo`: the
    classic fixed-delay batcher (arrival order, always waits `max_delay_ms`), kept for comparison."""
    max_batch_rows: int = Field(32, ge=1)
    """Most inputs in one engine call."""
    max_batch_tokens: int = Field(8192, ge=8)
    """Most padded tokens (rows x padded length) in one engine call."""
    max_delay_ms: float = Field(2.0, ge=0)
    """Longest a request waits for others to share its batch."""
    max_padding_ratio: float = Field(1.10, ge=1.0)
    """Padded tokens may exceed the rows' own tokens by this factor when grouping lengths."""
    batch_growth_efficiency: float = Field(0.9, gt=0, le=1.0)
    """A batch stops growing once the cost model says its per-row throughput is within this fraction of
    the best for its length (larger batches only add latency); 1.0 fills batches to the budgets."""
    default_deadline_ms: float = Field(1000.0, gt=0)
    """Deadline for calls that set none: no gRPC deadline, no `X-Request-Timeout` (an OpenAI SDK's own timeout
    counts where it is shorter; on the HTTP door, so does the patience that callers without either have
    shown by hanging up)."""
    learn_http_patience: bool = True
    """HTTP door: a call that states no deadline (no `X-Request-Timeout`, no OpenAI Python SDK timeout) gets
    the patience its callers' group has lately shown by hanging up, where shorter than
    `default_deadline_ms` (docs/OVERLOAD.md, "Callers that state no deadline"); off: `default_deadline_ms`."""
    max_queue_rows: int = Field(2048, ge=1)
    """Inputs that may wait per model; beyond it calls get RESOURCE_EXHAUSTED at once."""
    admission_length: AdmissionLength = "own"
    """How admission weighs a call's own length when the queue is nearly full. `own`: by its own compute, so
    under overload long inputs are refused first and the most calls are answered. `typical`: as if it had
    the typical length of the calls admitted lately, so every length is refused alike (a call whose own
    compute cannot fit its deadline is still refused); on sentences at 5x the peak it held fewer calls and
    no more text (docs/OVERLOAD.md, "Every length alike")."""
    profile_on_start: bool = True
    """Time a grid of batch shapes at start-up to seed the cost model."""
    watchdog_seconds: float = Field(30.0, gt=0)
    """An engine call running longer marks the model unhealthy (NOT_SERVING)."""

    # -- limits ---------------------------------------------------------------------------------
    max_inputs_per_request: int = Field(256, ge=1)
    """Most inputs in one request (INVALID_ARGUMENT beyond)."""
    max_chars_per_input: int = Field(50_000, ge=1)
    """Longest input in characters, checked before tokenizing."""
    max_tokens_per_request: int = Field(65_536, ge=1)
    """Most tokens in one request after tokenizing."""

    # -- lifecycle and logs ---------------------------------------------------------------------
    drain_seconds: float = Field(20.0, ge=0)
    """On SIGTERM, how long queued and running work may take to finish before the process exits."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_format: Literal["text", "json"] = "text"
    """`json` writes one JSON object per line."""

    # -- security -------------------------------------------------------------------------------
    tls_cert_file: Path | None = None
    """PEM certificate chain; with `tls_key_file` the server speaks TLS only."""
    tls_key_file: Path | None = None
    """PEM private key for `tls_cert_file`."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Accepted API keys (`authorization: Bearer KEY`); comma-separated in the environment. Empty: no
    authentication. Health checks are always allowed."""

    @field_validator("models", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._config_file))
        return tuple(sources)


#: gRPC core experiments that move the server's sockets onto the EventEngine's own threads.
EVENT_ENGINE_EXPERIMENTS = ("event_engine_listener", "event_engine_for_all_other_endpoints", "event_engine_callback_cq")


def apply_grpc_experiments(settings: Settings, environ: dict[str, str] | None = None) -> str:
    """Set GRPC_EXPERIMENTS for `settings.grpc_event_engine`, unless the operator has set it; returns its
    value. gRPC reads it when it is first imported, so call this before anything imports grpc."""
    env = os.environ if environ is None else environ
    if "GRPC_EXPERIMENTS" not in env and not settings.grpc_event_engine:
        env["GRPC_EXPERIMENTS"] = ",".join(f"-{name}" for name in EVENT_ENGINE_EXPERIMENTS)
    return env.get("GRPC_EXPERIMENTS", "")


def load_settings(overrides: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Settings from CLI `overrides`, the environment and `config_file` (or $MILLIBATCH_CONFIG)."""
    path = config_file or (Path(os.environ["MILLIBATCH_CONFIG"]) if os.environ.get("MILLIBATCH_CONFIG") else None)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    Settings._config_file = path
    try:
        return Settings(**(overrides or {}))
    finally:
        Settings._config_file = None


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags are left out so env and config file still apply."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif name in ("models", "api_keys"):
            parser.add_argument("--model" if name == "models" else "--api-key", flag, dest=name,
                                action="append", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text)
