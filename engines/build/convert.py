"""`millibatch convert`: checkpoint → ONNX model directory, validated against PyTorch.

The directory is assembled in a temporary sibling folder and renamed into place only once it has
passed validation, so an interrupted or failed run never leaves a half-written model behind.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.build import export, sources, validate
from engines.model_dir import Manifest, Task
from engines.onnxruntime_engine import OnnxRuntimeCpuEngine

#: fp32 graphs must agree with PyTorch this closely on every validation row.
FP32_MIN_COSINE = 0.9999
FP32_MAX_ABS_DIFF = 1e-3


class ConversionError(RuntimeError):
    """The converted model disagrees with PyTorch beyond tolerance, or the source is unusable."""


@dataclass(frozen=True)
class ConvertOptions:
    """What `convert` builds."""

    source: str
    output: Path
    task: Task = "embed"
    #: Serve under this name instead of the source folder's.
    name: str = ""
    #: Replace an existing output directory.
    force: bool = False
    #: Sentences used for the agreement check.
    validation_rows: int = 64
    #: Score the model on this STS-B file (embedding models); None skips it.
    stsb: Path | None = None


def log(message: str) -> None:
    """Progress on stderr so stdout stays machine-readable."""
    print(f"[convert] {message}", file=sys.stderr, flush=True)


def convert(options: ConvertOptions, progress: Callable[[str], None] = log) -> Manifest:
    """Build, validate and atomically publish a model directory; returns its manifest."""
    if options.task not in export.OUTPUTS_BY_TASK:
        raise ConversionError(f"task {options.task!r} is not supported by convert yet")
    output = options.output.resolve()
    if output.exists() and not options.force:
        raise ConversionError(f"{output} already exists; pass --force to replace it")
    source = sources.resolve(options.source)
    progress(f"source {source.path} (max_length={source.max_length}, pooling={source.pooling})")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        manifest = _build(source, options, staging, progress)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
        progress(f"wrote {output}")
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(
    source: sources.Source, options: ConvertOptions, staging: Path, progress: Callable[[str], None]
) -> Manifest:
    started = time.perf_counter()
    model = export.load_reference(source.path, options.task)
    head = export.build_head(model, options.task, source.pooling)
    progress("exporting ONNX graph")
    export.export_onnx(head, options.task, staging / "model.onnx")
    _write_plain_tokenizer(source.path / "tokenizer.json", staging / "tokenizer.json")

    labels: list[str] = []
    if options.task == "classify":
        id2label = model.config.id2label
        labels = [str(id2label[i]) for i in range(len(id2label))]
    dimensions = len(labels) if labels else int(model.config.hidden_size)
    manifest = Manifest(
        name=options.name or source.name,
        task=options.task,
        max_length=source.max_length,
        dimensions=dimensions,
        input_names=list(export.INPUT_NAMES),
        output_names=list(export.OUTPUTS_BY_TASK[options.task]),
        labels=labels,
        pooling=source.pooling if options.task == "embed" else "",
        normalize=source.normalize if options.task == "embed" else False,
        source=str(source.path),
        source_hash=sources.source_hash(source.path),
    )
    progress("validating against PyTorch")
    manifest.validation = _validate(head, manifest, staging, options)
    manifest.validation["convert_seconds"] = round(time.perf_counter() - started, 2)
    manifest.save(staging)
    return manifest


def _write_plain_tokenizer(source: Path, target: Path) -> None:
    """Copy tokenizer.json without its padding/truncation presets: the server decides both per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(target))


def _validate(head: Any, manifest: Manifest, staging: Path, options: ConvertOptions) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(staging / "tokenizer.json"))
    engine = OnnxRuntimeCpuEngine(staging / manifest.onnx_file)
    output = manifest.output_names[0]

    def run_engine(texts: list[str]) -> np.ndarray:
        return engine.run(validate.encode_padded(tokenizer, texts, manifest.max_length), 0)[output]

    sentences = validate.sample_sentences(options.validation_rows, options.stsb)
    batch = validate.encode_padded(tokenizer, sentences, manifest.max_length)
    with torch.no_grad():
        reference = head(
            *(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
        )[0].numpy()
    candidate = engine.run(batch, 0)[output]
    result: dict[str, Any] = {"rows": len(sentences), **validate.agreement(reference, candidate)}
    if manifest.task == "classify":
        result["label_agreement"] = float((reference.argmax(1) == candidate.argmax(1)).mean())
    if result["min_cosine"] < FP32_MIN_COSINE or result["max_abs_diff"] > FP32_MAX_ABS_DIFF:
        raise ConversionError(
            f"ONNX output disagrees with PyTorch: min cosine {result['min_cosine']:.6f} "
            f"(need ≥ {FP32_MIN_COSINE}), max abs diff {result['max_abs_diff']:.2e} (need ≤ {FP32_MAX_ABS_DIFF})"
        )
    if options.stsb is not None and manifest.task == "embed":
        pairs = validate.load_stsb(options.stsb)
        result["stsb_spearman"] = round(validate.stsb_score(run_engine, pairs), 4)
    engine.close()
    return result
