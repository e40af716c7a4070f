"""GPU engines against ONNX Runtime on CPU (fp32 reference). Skipped cleanly on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from millibatch.engines import cuda_runtime
from millibatch.engines.base import Engine, EngineInputs, FloatArray
from millibatch.engines.buckets import BucketPlan
from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
from millibatch.engines.plans import load_plan_specs
from millibatch.engines.select import EngineOptions, EngineUnavailable, onnxruntime_providers, probe

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(0)


def _require(provider: str = "CUDAExecutionProvider") -> None:
    if provider not in onnxruntime_providers():
        pytest.skip(f"onnxruntime has no {provider} (needs onnxruntime-gpu)")
    if cuda_runtime.device_count() == 0:
        pytest.skip("no CUDA GPU visible (or cuda-python missing)")


def _batch(rows: int, length: int, padded: int) -> EngineInputs:
    """Random token ids with ragged real lengths, right-padded like the batcher's collate."""
    ids = np.zeros((rows, padded), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r in range(rows):
        n = int(RNG.integers(2, length + 1)) if r else length
        ids[r, :n] = RNG.integers(1000, 30000, n)
        ids[r, 0], ids[r, n - 1] = 101, 102
        mask[r, :n] = 1
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def _min_cosine(a: FloatArray, b: FloatArray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))
    return float(cos.min())


def _compare(gpu_engine: Engine, model_dir: Path, threshold: float) -> None:
    manifest = Manifest.load(model_dir)
    cpu = OnnxRuntimeCpuEngine(model_dir / manifest.onnx_file)
    try:
        # Several buckets, row counts and both instances, twice: buffers are reused across calls.
        for _ in range(2):
            for instance, (rows, length) in enumerate([(1, 5), (7, 30), (32, 64), (3, manifest.max_length)]):
                padded = gpu_engine.padded_length(length)
                batch = _batch(rows, min(length, padded), padded)
                got = gpu_engine.run(batch, instance % gpu_engine.info.instances)
                want = cpu.run(batch, 0)
                for name in cpu.output_names:
                    assert got[name].shape == want[name].shape and got[name].dtype == np.float32
                    assert _min_cosine(got[name], want[name]) >= threshold, name
    finally:
        cpu.close()


def test_ort_cuda_matches_cpu_fp32(tiny_embed_dir: Path, tiny_classify_dir: Path) -> None:
    _require()
    from millibatch.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    for model_dir in (tiny_embed_dir, tiny_classify_dir):
        manifest = Manifest.load(model_dir)
        engine = OnnxRuntimeCudaEngine(model_dir / manifest.onnx_file, BucketPlan.build(32, manifest.max_length),
                                       instances=2)
        try:
            assert engine.info.device == "cuda"
            _compare(engine, model_dir, 0.9999)
        finally:
            engine.close()


def _tiny_converted(tiny_embed_dir: Path, tmp_path: Path, precision: str) -> Path:
    """The tiny embedder's checkpoint (beside its model directory) converted for CUDA at `precision`."""
    from millibatch.engines.convert.convert import ConvertOptions, convert

    out = tmp_path / precision
    convert(ConvertOptions(source=str(tiny_embed_dir.parent / "checkpoint"), output=out, precision=precision,  # type: ignore[arg-type]
                           device="cuda"), progress=lambda _: None)
    return out


def test_ort_cuda_fp16_matches_cpu_fp32(tiny_embed_dir: Path, tmp_path: Path) -> None:
    _require()
    from millibatch.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    fp16_dir = _tiny_converted(tiny_embed_dir, tmp_path, "fp16")
    manifest = Manifest.load(fp16_dir)
    engine = OnnxRuntimeCudaEngine(fp16_dir / manifest.onnx_file, BucketPlan.build(32, manifest.max_length),
                                   precision="fp16")
    try:
        assert engine.info.device == "cuda" and engine.info.precision == "fp16"
        _compare(engine, tiny_embed_dir, 0.999)
    finally:
        engine.close()


def test_ort_cuda_graphs_match_cpu(tiny_embed_dir: Path) -> None:
    _require()
    from millibatch.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    manifest = Manifest.load(tiny_embed_dir)
    try:
        engine = OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, BucketPlan.build(32, manifest.max_length),
                                       instances=2, cuda_graphs=True)
        for instance in range(2):  # this thread serves both: capture their graphs here
            engine.prepare_thread(instance)
    except Exception as exc:  # say why graphs cannot be captured for this graph, rather than pass silently
        pytest.fail(f"CUDA graphs did not load: {exc}")
    try:
        assert engine.run_shape(3, 16, 1)[1] == 4, "runs replay graphs, rows padded to the graph's"
        _compare(engine, tiny_embed_dir, 0.9999)
    finally:
        engine.close()


async def test_ort_cuda_graphs_serve_two_instances_at_once(tiny_embed_dir: Path) -> None:
    # The batcher's own engine threads: each captures its instance's graphs before traffic, one at a
    # time; then both replay side by side. Captured under traffic instead, one thread's capture failed
    # the other's CUDA calls (H100, 2026-11-27: 75 INTERNAL answers with two instances).
    import asyncio
    import time

    from millibatch.batching.workers import EngineWorkers, Job
    from millibatch.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    _require()
    manifest = Manifest.load(tiny_embed_dir)
    engine = OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, BucketPlan.build(32, manifest.max_length),
                                   instances=2, cuda_graphs=True)
    cpu = OnnxRuntimeCpuEngine(tiny_embed_dir / manifest.onnx_file)
    batches = []
    for _ in range(60):
        rows, length = int(RNG.integers(1, 33)), int(RNG.integers(2, manifest.max_length + 1))
        padded = engine.padded_length(length)
        batches.append(_batch(rows, min(length, padded), padded))
    loop = asyncio.get_running_loop()
    finished: list[Job] = []
    all_done = asyncio.Event()

    def done(job: Job) -> None:
        finished.append(job)
        if len(finished) == len(batches):
            all_done.set()

    workers = EngineWorkers(engine.run, 2, loop, time.monotonic, done, done, "nice", engine.prepare_thread)
    try:
        await asyncio.to_thread(workers.wait_prepared, 120)
        for batch_id, batch in enumerate(batches):
            workers.submit(Job(batch_id=batch_id, batch=[], inputs=batch))
        await asyncio.wait_for(all_done.wait(), 120)
        assert [job.error for job in finished if job.error is not None] == []
        assert {job.instance for job in finished} == {0, 1}
        for job in finished:
            assert job.outputs is not None
            want = cpu.run(job.inputs, 0)
            for name in cpu.output_names:
                assert _min_cosine(job.outputs[name], want[name]) >= 0.9999, name
    finally:
        workers.close()
        engine.close()
        cpu.close()


def test_ort_tensorrt_provider_fp16_matches_cpu(tiny_embed_dir: Path, tmp_path: Path) -> None:
    _require("TensorrtExecutionProvider")
    from millibatch.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    manifest = Manifest.load(tiny_embed_dir)
    try:
        engine = OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, BucketPlan.build(32, manifest.max_length),
                                       provider="tensorrt", trt_fp16=True, trt_cache_dir=tmp_path)
    except EngineUnavailable as exc:  # onnxruntime-gpu lists the provider even where libnvinfer is missing
        pytest.skip(f"TensorRT execution provider cannot start: {exc}")
    try:
        _compare(engine, tiny_embed_dir, 0.999)
    finally:
        engine.close()


def test_native_tensorrt_plan_matches_cpu(tiny_embed_dir: Path) -> None:
    _require()
    caps = probe(tiny_embed_dir)
    if caps.tensorrt_version is None:
        pytest.skip("tensorrt is not installed")
    if not load_plan_specs(tiny_embed_dir):
        pytest.skip("no TensorRT plan in the model directory (the TensorRT build step did not run)")
    from millibatch.engines.select import load_engine

    manifest = Manifest.load(tiny_embed_dir)
    engine = load_engine(tiny_embed_dir, manifest, EngineOptions(engine="tensorrt"))
    try:
        threshold = 0.999 if engine.info.precision == "fp16" else 0.9999
        _compare(engine, tiny_embed_dir, threshold)
    finally:
        engine.close()


def test_auto_picks_the_gpu(tiny_embed_dir: Path) -> None:
    _require()
    from millibatch.engines.select import load_engine

    engine = load_engine(tiny_embed_dir, Manifest.load(tiny_embed_dir), EngineOptions())
    try:
        assert engine.info.device == "cuda" and engine.info.reason.startswith("auto:")
    finally:
        engine.close()
