"""`millibatch convert`: checkpoint → ONNX model directory, validated against PyTorch.

The directory is assembled in a temporary sibling folder and renamed into place only once it has
passed validation, so an interrupted or failed run never leaves a half-written model behind.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from millibatch.engines.base import EngineInputs
from millibatch.engines.buckets import BucketPlan
from millibatch.engines.convert import export, optimize, quantize, quick_bench, sources, tensorrt_plan, validate
from millibatch.engines.model_dir import Manifest, Task
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine

Precision = Literal["fp32", "fp16", "int8"]

#: fp32 graphs must agree with PyTorch this closely on every validation row.
FP32_MIN_COSINE = 0.9999
FP32_MAX_ABS_DIFF = 1e-3


@dataclass(frozen=True)
class Tolerance:
    """How closely a variant must agree with PyTorch (cosine per row; abs diff only for fp32)."""

    min_cosine: float
    mean_cosine: float
    max_abs_diff: float


#: Per precision; int8 and fp16 change the numbers by design but must keep the meaning.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_cosine=FP32_MIN_COSINE, mean_cosine=FP32_MIN_COSINE, max_abs_diff=FP32_MAX_ABS_DIFF),
    "fp16": Tolerance(min_cosine=0.999, mean_cosine=0.9995, max_abs_diff=float("inf")),
    "int8": Tolerance(min_cosine=0.95, mean_cosine=0.98, max_abs_diff=float("inf")),
}

#: Kept in fp32 by default for CPU int8. Found by rank_sensitive_nodes on all-MiniLM-L6-v2: the first
#: layer's FFN output projection buys back the most STS-B per excluded MatMul (docs/OPTIMIZE.md).
#: Static int8 (GPU / TensorRT) keeps every FFN output projection instead (quantize.ffn_output_nodes).
DEFAULT_INT8_FP32_PATTERNS = ("/layer.0/output/dense/MatMul",)


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
    #: Weight precision of the served graph.
    precision: Precision = "fp32"
    #: Runtime the artefacts are for; "tensorrt" also builds a plan (needs tensorrt + a GPU).
    engine: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    #: Device the graph is tuned for: int8 on "cpu" is dynamic, on "cuda" static QDQ.
    device: Literal["cpu", "cuda"] = "cpu"
    #: Fuse attention / LayerNorm / GELU with onnxruntime's transformer optimizer.
    fuse: bool = True
    #: TensorRT profile ranges (MIN, OPT, MAX); None uses (1, 128, max_length) and (1, 32, 64).
    seq_len: tuple[int, int, int] | None = None
    batch: tuple[int, int, int] | None = None
    #: Execution contexts the TensorRT plan gets profiles for (must match the server's --instances).
    instances: int = 1
    #: Node names (substrings) kept fp32 in int8 graphs; None uses DEFAULT_INT8_FP32_PATTERNS.
    int8_fp32_nodes: tuple[str, ...] | None = None
    #: Time the variant beside the plain fp32 graph and PyTorch after validation (quick_bench).
    benchmark: bool = False
    #: ONNX Runtime / PyTorch threads for the benchmark; 0 = what one server instance gets by default.
    benchmark_threads: int = 0


def log(message: str) -> None:
    """Progress on stderr so stdout stays machine-readable."""
    print(f"[convert] {message}", file=sys.stderr, flush=True)


def convert(options: ConvertOptions, progress: Callable[[str], None] = log) -> Manifest:
    """Build, validate and atomically publish a model directory; returns its manifest."""
    if options.task not in export.OUTPUTS_BY_TASK:
        raise ConversionError(f"task {options.task!r} is not supported by convert yet")
    if options.engine == "tensorrt":
        try:  # fail before the slow export, not after it
            tensorrt_plan.tensorrt_version()
        except tensorrt_plan.TensorRTUnavailable as error:
            raise ConversionError(str(error)) from error
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
    try:
        model = export.load_reference(source.path, options.task)
    except ValueError as error:  # a checkpoint that cannot do the task
        raise ConversionError(str(error)) from error
    head = export.build_head(model, options.task, source.pooling)
    progress("exporting ONNX graph")
    exported = staging / "exported.onnx"
    export.export_onnx(head, options.task, exported)
    _write_plain_tokenizer(source.path / "tokenizer.json", staging / "tokenizer.json")
    optimizations = _optimize(exported, staging, model.config, source.max_length, options, progress)

    labels: list[str] = []
    if options.task in ("classify", "token-classify"):
        id2label = model.config.id2label
        labels = [str(id2label[i]) for i in range(len(id2label))]
    dimensions = len(labels) if labels else int(model.config.hidden_size)
    if options.task == "sparse-embed":
        dimensions = int(model.config.vocab_size)
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
        prompts=dict(source.prompts),
        default_prompt_name=source.default_prompt_name,
        source=str(source.path),
        source_hash=sources.source_hash(source.path),
        precision=options.precision,
        engine=options.engine,
        optimizations=optimizations,
    )
    if options.engine == "tensorrt":
        _build_plan(manifest, staging, options, progress)
    progress(f"validating {options.precision} graph against PyTorch")
    manifest.validation = _validate(head, manifest, staging, options)
    manifest.validation["convert_seconds"] = round(time.perf_counter() - started, 2)
    if options.benchmark:
        manifest.benchmark = _benchmark(head, manifest, staging, exported, options, progress)
    exported.unlink()
    manifest.save(staging)
    return manifest


def variant_label(manifest: Manifest) -> str:
    """How the quick benchmark names the built variant: its precision, "-fused" for a fused fp32 graph."""
    fused = manifest.precision == "fp32" and bool(manifest.optimizations.get("fusion"))
    return f"{manifest.precision}-fused" if fused else manifest.precision


def _benchmark(
    head: Any, manifest: Manifest, staging: Path, exported: Path, options: ConvertOptions,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Time PyTorch, the exported fp32 graph and the built variant side by side on this CPU."""
    import torch

    from millibatch.engines.onnxruntime_engine import auto_instances, default_threads_per_instance

    threads = options.benchmark_threads or default_threads_per_instance(auto_instances())
    output = manifest.output_names[0]

    def onnx_runner(path: Path) -> Callable[[EngineInputs], object]:
        engine = OnnxRuntimeCpuEngine(path, threads_per_instance=threads)
        return lambda batch: engine.run(batch, 0)[output]

    candidates: dict[str, Callable[[EngineInputs], object]] = {
        "pytorch": functools.partial(export.run_reference, head), quick_bench.BASELINE: onnx_runner(exported)
    }
    label = variant_label(manifest)
    if label == quick_bench.BASELINE:
        pass  # the served graph is the exported one
    elif manifest.validation.get("verified") is False:
        progress(f"quick benchmark leaves out {label}: {manifest.validation.get('reason')}")
    else:
        candidates[label] = onnx_runner(staging / manifest.onnx_file)
    progress(f"quick benchmark on CPU, {threads} thread(s) per session: {', '.join(candidates)}")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return quick_bench.run(candidates, max_length=manifest.max_length, threads=threads, progress=progress)
    finally:
        torch.set_num_threads(torch_threads)


def _optimize(
    exported: Path,
    staging: Path,
    config: Any,
    max_length: int,
    options: ConvertOptions,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Turn the exported fp32 graph into staging/model.onnx at the requested precision."""
    target = staging / "model.onnx"
    heads, hidden = int(config.num_attention_heads), int(config.hidden_size)
    done: dict[str, Any] = {}
    # TensorRT fuses on its own and wants the plain (QDQ) graph; so does static int8 for CUDA.
    static_int8 = options.precision == "int8" and (options.device == "cuda" or options.engine == "tensorrt")
    fuse = options.fuse and options.engine == "onnxruntime" and not static_int8
    if options.precision == "fp16":
        progress("converting to fp16 (normalisation, softmax and pooling stay fp32)")
        done["fusion"] = optimize.to_fp16(exported, target, num_heads=heads, hidden_size=hidden, fused=fuse)
        done["fp16_keep_fp32_ops"] = list(optimize.FP16_KEEP_FP32_OPS)
        if fuse:
            _check_attention_fused(done, int(config.num_hidden_layers), progress)
        return done
    graph = exported
    if fuse:
        progress("fusing attention, LayerNorm and GELU")
        graph = staging / "fused.onnx"
        done["fusion"] = optimize.fuse(exported, graph, num_heads=heads, hidden_size=hidden,
                                       use_gpu=options.device == "cuda")
        _check_attention_fused(done, int(config.num_hidden_layers), progress)
    if options.precision == "int8":
        candidates = quantize.weight_nodes(graph)
        if options.int8_fp32_nodes is not None:
            keep = [n for n in candidates if any(p in n for p in options.int8_fp32_nodes)]
        elif static_int8:
            keep = quantize.ffn_output_nodes(candidates)
        else:
            keep = [n for n in candidates if any(p in n for p in DEFAULT_INT8_FP32_PATTERNS)]
        if static_int8:
            progress(f"smoothing and calibrating static int8 (QDQ) on real sentences, {len(keep)} MatMul kept fp32")
            done["quantization"] = quantize.quantize_static_qdq(
                graph, target, _calibration_batches(staging, max_length, options), export.INPUT_NAMES, exclude=keep
            )
        else:
            progress(f"quantizing to int8 (dynamic, per channel, {len(keep)} MatMul kept fp32)")
            done["quantization"] = quantize.quantize_dynamic_int8(graph, target, exclude=keep)
    elif graph == exported:
        shutil.copyfile(exported, target)
    else:
        graph.replace(target)
    if graph != exported and graph.exists():
        graph.unlink()
    return done


def _check_attention_fused(done: dict[str, Any], layers: int, progress: Callable[[str], None]) -> None:
    """Warn, and say so in the manifest, when fusion left attention unfused in some layers. The graph
    still gives the same answers, so validation passes, but each unfused layer runs a dozen small ops
    instead of one kernel, with shape arithmetic on the CPU between them: on a GPU that made every batch
    cost about 2 ms (docs/GPU.md). onnxruntime 1.30.0's optimizer does this to MiniLM's export."""
    import onnxruntime

    fused = sum(done["fusion"].get(op, 0) for op in optimize.ATTENTION_OPS)
    if fused < layers:
        done["fusion_warning"] = (f"attention fused in {fused} of {layers} layers by onnxruntime "
                                  f"{onnxruntime.__version__}'s optimizer; the graph is correct but slower "
                                  "(see docs/OPTIMIZE.md)")
        progress(f"WARNING: {done['fusion_warning']}")


def _calibration_batches(staging: Path, max_length: int, options: ConvertOptions) -> list[Any]:
    """Real sentences (STS-B when available), encoded in batches of 16 for calibration."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(staging / "tokenizer.json"))
    sentences = validate.sample_sentences(128, options.stsb)
    return [validate.encode_padded(tokenizer, sentences[i : i + 16], max_length) for i in range(0, len(sentences), 16)]


def _build_plan(
    manifest: Manifest, staging: Path, options: ConvertOptions, progress: Callable[[str], None]
) -> None:
    """Build the TensorRT plan and record its profiles in the manifest."""
    seq_len = options.seq_len or (1, min(128, manifest.max_length), manifest.max_length)
    batch = options.batch or (1, 8, 32)
    if not (1 <= seq_len[0] <= seq_len[1] <= seq_len[2] and 1 <= batch[0] <= batch[1] <= batch[2]):
        raise ConversionError(f"--seq-len and --batch need 1 <= MIN <= OPT <= MAX, got {seq_len} and {batch}")
    buckets = BucketPlan.build(batch[2], min(seq_len[2], manifest.max_length))
    progress(f"building TensorRT plan: {options.instances} instance(s) x {len(buckets.lengths)} length buckets "
             f"{list(buckets.lengths)}, rows 1..{buckets.max_rows}")
    spec, details = tensorrt_plan.build_plan(
        staging / manifest.onnx_file, staging, buckets, manifest.input_names, precision=options.precision,
        instances=options.instances, opt_rows=batch[1],
    )
    manifest.tensorrt_plans.append(spec.to_json())
    manifest.plan_file = spec.file
    manifest.profiles = details["profiles"]
    manifest.optimizations["tensorrt"] = {"workspace_bytes": details["workspace_bytes"]}


def _write_plain_tokenizer(source: Path, target: Path) -> None:
    """Copy tokenizer.json without its padding/truncation presets: the server decides both per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(target))


def _validate(head: Any, manifest: Manifest, staging: Path, options: ConvertOptions) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(staging / "tokenizer.json"))
    try:
        engine = OnnxRuntimeCpuEngine(staging / manifest.onnx_file)
    except Exception as error:  # onnxruntime raises its own untyped errors for missing CPU kernels
        if options.precision == "fp32":
            raise
        # Some fp16 contrib kernels exist only for CUDA: say so in the manifest instead of guessing.
        return {"verified": False, "reason": f"ONNX Runtime CPU cannot run this graph: {str(error)[:200]}"}
    tolerance = TOLERANCES[options.precision]
    output = manifest.output_names[0]

    def run_engine(texts: list[str]) -> np.ndarray:
        return engine.run(validate.encode_padded(tokenizer, texts, manifest.max_length), 0)[output]

    def run_torch(texts: list[str]) -> np.ndarray:
        return export.run_reference(head, validate.encode_padded(tokenizer, texts, manifest.max_length))

    sentences = validate.sample_sentences(options.validation_rows, options.stsb)
    if manifest.task == "sparse-embed":
        # Its graph holds [rows, tokens, vocab] logits (4 GB for 64 x 512 x 30522): a few rows at a time.
        reference = np.concatenate([run_torch(sentences[i : i + 8]) for i in range(0, len(sentences), 8)])
        candidate = np.concatenate([run_engine(sentences[i : i + 8]) for i in range(0, len(sentences), 8)])
    else:
        batch = validate.encode_padded(tokenizer, sentences, manifest.max_length)
        reference = export.run_reference(head, batch)
        candidate = engine.run(batch, 0)[output]
        if manifest.task == "token-classify":
            # Compare real tokens only: padding positions carry no meaning.
            real = batch.attention_mask.astype(bool)
            reference, candidate = reference[real], candidate[real]
    result: dict[str, Any] = {
        "rows": len(sentences), "verified": True, **validate.agreement(reference, candidate)
    }
    if manifest.task in ("classify", "token-classify"):
        result["label_agreement"] = float((reference.argmax(-1) == candidate.argmax(-1)).mean())
    if (
        result["min_cosine"] < tolerance.min_cosine
        or result["mean_cosine"] < tolerance.mean_cosine
        or result["max_abs_diff"] > tolerance.max_abs_diff
    ):
        raise ConversionError(
            f"{options.precision} ONNX output disagrees with PyTorch: min cosine {result['min_cosine']:.6f} "
            f"(need ≥ {tolerance.min_cosine}), mean cosine {result['mean_cosine']:.6f} "
            f"(need ≥ {tolerance.mean_cosine}), max abs diff {result['max_abs_diff']:.2e} "
            f"(need ≤ {tolerance.max_abs_diff})"
        )
    if options.stsb is not None and manifest.task == "embed":
        pairs = validate.load_stsb(options.stsb)
        result["stsb_spearman"] = round(validate.stsb_score(run_engine, pairs), 4)
        result["stsb_spearman_pytorch"] = round(validate.stsb_score(run_torch, pairs), 4)
    engine.close()
    return result


def validation_table(manifest: Manifest) -> str:
    """The manifest's validation as a markdown table: each check, its result and what it had to meet."""
    result = manifest.validation
    if result.get("verified") is False:
        return f"validation: not verified ({result.get('reason')})"
    tolerance = TOLERANCES.get(manifest.precision)
    rows: list[tuple[str, str, str]] = [("rows compared with PyTorch", str(result.get("rows")), "")]
    if tolerance is not None:
        limit = "" if tolerance.max_abs_diff == float("inf") else f"≤ {tolerance.max_abs_diff:g}"
        rows += [
            ("max abs diff", f"{result['max_abs_diff']:.2e}", limit),
            ("min cosine", f"{result['min_cosine']:.6f}", f"≥ {tolerance.min_cosine:g}"),
            ("mean cosine", f"{result['mean_cosine']:.6f}", f"≥ {tolerance.mean_cosine:g}"),
        ]
    if "label_agreement" in result:
        rows.append(("label agreement", f"{result['label_agreement']:.4f}", ""))
    if "stsb_spearman" in result:
        rows.append(("STS-B Spearman x100", f"{result['stsb_spearman']:.2f}",
                     f"PyTorch: {result['stsb_spearman_pytorch']:.2f}" if "stsb_spearman_pytorch" in result else ""))
    lines = [f"validation of {manifest.name} ({manifest.precision}) against PyTorch", "",
             "| check | result | bound |", "|---|---|---|"]
    lines += [f"| {check} | {value} | {bound} |" for check, value, bound in rows]
    return "\n".join(lines)
