"""The served models by name: what a request's `model` field resolves to, and whether it may run now."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from millibatch.batching.batcher import Batcher
from millibatch.engines.base import Engine
from millibatch.engines.model_dir import Manifest
from millibatch.errors import ModelNotFound, NotServing, WrongTask
from millibatch.service.tokenization import TextEncoder


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

    def known(self, name: str) -> ServedModel:
        """The served model called `name` (the default when empty), ready or not; NOT_FOUND otherwise."""
        model = self.models.get(name or self.default)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here (served: {known})")
        return model

    def get(self, name: str, task: str | None = None) -> ServedModel:
        """The model for a request, or NOT_FOUND / FAILED_PRECONDITION / UNAVAILABLE."""
        model = self.models.get(name or self.default) or self.known(name)
        if task is not None and model.manifest.task != task:
            raise WrongTask(f"model {model.name!r} does {model.manifest.task}, not {task}")
        if not self.accepting:
            raise NotServing("server is shutting down")
        if not model.ready:
            raise NotServing(f"model {model.name!r} is not ready")
        return model

    def metric_label(self, name: str) -> str:
        """The model label for metrics: the served name, or "unknown" for names not served here (so
        clients cannot blow up the number of series)."""
        name = name or self.default
        return name if name in self.models else UNKNOWN_MODEL


#: Label for requests naming a model that is not served (keeps label cardinality bounded).
UNKNOWN_MODEL = "unknown"
