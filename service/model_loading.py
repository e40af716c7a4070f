"""Loading a model directory into a ServedModel: tokenizer, engine, batcher, warm-up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from millibatch.batching.batcher import Batcher, BatchObserver
from millibatch.batching.scheduler import BatchLimits
from millibatch.engines.model_dir import Manifest
from millibatch.engines.select import EngineOptions, load_engine
from millibatch.service.registry import ServedModel
from millibatch.service.tokenization import TextEncoder
from millibatch.settings import DEFAULT_MODEL, Settings

log = logging.getLogger("millibatch.models")


def model_specs(settings: Settings) -> list[str]:
    """The models to serve: the configured ones, else the default packaged model."""
    return list(settings.models) or [DEFAULT_MODEL]


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
            cpu_spinning=settings.cpu_spinning, engine_priority=settings.engine_priority,
        ),
    )
    batcher = Batcher(
        engine,
        batch_limits(settings),
        max_queue_rows=settings.max_queue_rows,
        watchdog_seconds=settings.watchdog_seconds,
        observer=observer,
        engine_priority=settings.engine_priority,
        admission_length=settings.admission_length,
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
