"""Served models: resolve, load and warm them, and look them up by name."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from millibatch.batching.batcher import Batcher, BatchObserver
from millibatch.batching.scheduler import BatchLimits
from millibatch.batching.work import Row, RowResult, WorkItem
from millibatch.engines.base import Engine
from millibatch.engines.model_dir import Manifest, is_model_dir
from millibatch.engines.select import EngineOptions, load_engine
from millibatch.errors import DeadlineUnmeetable, InvalidInput, ModelNotFound, NotServing, WrongTask
from millibatch.service.tokenization import TextEncoder
from millibatch.settings import DEFAULT_MODEL, Settings

log = logging.getLogger("millibatch.models")


@dataclass
class ServedModel:
    """A model ready to take requests: its manifest, tokenizer, engine and batcher."""

    name: str
    directory: Path
    manifest: Manifest
    encoder: TextEncoder
    engine: Engine
    batcher: Batcher
    #: Seconds spent loading and warming up.
    load_seconds: float = 0.0
    #: True once warmed up and until the model becomes unhealthy or the server drains.
    ready: bool = False

    async def compute(self, rows: list[Row], deadline: float, max_tokens: int) -> tuple[list[RowResult], WorkItem]:
        """Queue one request's rows and wait for them; per-row results in input order. Every protocol
        goes through here: the request's token limit, admission, and never answering after `deadline`."""
        tokens = sum(r.length for r in rows)
        if tokens > max_tokens:
            raise InvalidInput(f"request has {tokens} tokens; the limit is {max_tokens}")
        item = self.batcher.submit(rows, deadline)
        results = await item.future
        if asyncio.get_running_loop().time() > deadline:
            raise DeadlineUnmeetable("finished after the request's deadline")
        return results, item


def resolve_model_dir(spec: str, settings: Settings) -> Path:
    """A model directory for `spec`: a directory from `convert`, or a packaged model name converted once
    into the cache folder (the only step that needs torch)."""
    path = Path(spec).expanduser()
    if is_model_dir(path):
        return path
    from millibatch.engines.convert.sources import PACKAGED_MODELS

    if spec not in PACKAGED_MODELS:
        raise FileNotFoundError(f"model {spec!r}: not a model directory (no manifest.json) nor a packaged model")
    cached = settings.cache_dir / spec
    if not is_model_dir(cached):
        from millibatch.engines.convert.convert import ConvertOptions, convert

        log.info("converting %s into %s (first use)", spec, cached)
        convert(ConvertOptions(source=spec, output=cached, force=True))
    return cached


def batch_limits(settings: Settings) -> BatchLimits:
    """Batch formation limits from settings."""
    return BatchLimits(
        policy=settings.batch_policy,
        max_rows=settings.max_batch_rows,
        max_tokens=settings.max_batch_tokens,
        max_delay=settings.max_delay_ms / 1000.0,
        max_padding_ratio=settings.max_padding_ratio,
        growth_efficiency=settings.batch_growth_efficiency,
    )


def load_model(
    directory: Path, settings: Settings, observer_for: Callable[[str], BatchObserver] | None = None
) -> ServedModel:
    """Load tokenizer and engine (blocking) and warm the engine up; not ready until `ready` is set.
    `observer_for(model name)` gives the batcher's metric hooks."""
    started = time.perf_counter()
    manifest = Manifest.load(directory)
    observer = observer_for(manifest.name) if observer_for is not None else None
    encoder = TextEncoder(directory / "tokenizer.json", manifest.max_length, settings.max_chars_per_input)
    engine = load_engine(
        directory,
        manifest,
        EngineOptions(
            settings.engine, settings.device, settings.instances, settings.threads_per_instance,
            max_rows=settings.max_batch_rows, max_length=manifest.max_length,
            ort_tensorrt_provider=settings.ort_tensorrt_provider, ort_tensorrt_fp16=settings.ort_tensorrt_fp16,
            ort_tensorrt_cache_dir=settings.cache_dir / "tensorrt", cuda_graphs=settings.cuda_graphs,
        ),
    )
    batcher = Batcher(
        engine,
        batch_limits(settings),
        max_queue_rows=settings.max_queue_rows,
        watchdog_seconds=settings.watchdog_seconds,
        observer=observer,
    )
    batcher.warm_up(manifest.max_length, profile=settings.profile_on_start)
    model = ServedModel(manifest.name, directory, manifest, encoder, engine, batcher)
    model.load_seconds = time.perf_counter() - started
    info = engine.info
    log.info(
        "loaded model %s: task=%s engine=%s device=%s precision=%s instances=%d (%s) in %.2fs",
        model.name, manifest.task, info.engine, info.device, info.precision, info.instances, info.reason,
        model.load_seconds,
    )
    return model


@dataclass
class ModelRegistry:
    """Served models by name, plus the default for requests that name none."""

    models: dict[str, ServedModel] = field(default_factory=dict)
    default: str = ""
    #: False while draining: new calls get UNAVAILABLE.
    accepting: bool = True

    def add(self, model: ServedModel) -> None:
        if model.name in self.models:
            raise ValueError(f"two served models are named {model.name!r}; rename one with convert --name")
        self.models[model.name] = model
        self.default = self.default or model.name

    def get(self, name: str, task: str | None = None) -> ServedModel:
        """The model for a request, or NOT_FOUND / FAILED_PRECONDITION / UNAVAILABLE."""
        model = self.models.get(name or self.default)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here (served: {known})")
        if task is not None and model.manifest.task != task:
            raise WrongTask(f"model {model.name!r} does {model.manifest.task}, not {task}")
        if not self.accepting:
            raise NotServing("server is shutting down")
        if not model.ready:
            raise NotServing(f"model {model.name!r} is not ready")
        return model


def model_specs(settings: Settings) -> list[str]:
    """The models to serve: the configured ones, else the default packaged model."""
    return list(settings.models) or [DEFAULT_MODEL]
