"""The ORT CUDA engine's IO-binding path (bucketed buffers, staging, bound outputs, reuse) run on CPU through
its host backend, against the plain CPU engine. Only the CUDA copies and streams are left for GPU tests."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from millibatch.engines.base import EngineInputs
from millibatch.engines.buckets import BucketPlan
from millibatch.engines.cuda_runtime import HostBackend
from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_cuda import NO_GRAPH, OnnxRuntimeCudaEngine
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine


def _batch(rng: np.random.Generator, lengths: list[int], padded: int) -> EngineInputs:
    ids = np.zeros((len(lengths), padded), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(1000, 30000, n)
        mask[r, :n] = 1
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["exact-rows", "rows-padded-for-graphs"])
def test_io_binding_path_matches_the_cpu_engine(tiny_embed_dir: Path, tiny_classify_dir: Path,
                                                cuda_graphs: bool) -> None:
    rng = np.random.default_rng(1)
    for model_dir in (tiny_embed_dir, tiny_classify_dir):
        manifest = Manifest.load(model_dir)
        plan = BucketPlan.build(8, manifest.max_length)
        engine = OnnxRuntimeCudaEngine(model_dir / manifest.onnx_file, plan, instances=2, backend=HostBackend(),
                                       cuda_graphs=cuda_graphs, input_names=tuple(manifest.input_names))
        reference = OnnxRuntimeCpuEngine(model_dir / manifest.onnx_file)
        try:
            for instance in range(2):  # this thread serves both instances, as an engine thread would one
                engine.prepare_thread(instance)
            assert engine.run_shape(3, 16, 1) == ((plan.graph_shape(3, 16)) if cuda_graphs else (NO_GRAPH, 3))
            assert engine.info.device == "cpu" and "IO binding" in engine.info.reason
            assert engine.output_names == reference.output_names
            # Shrinking and growing batches across buckets and instances: stale rows in reused buffers must
            # never leak into a later, smaller batch.
            for instance, lengths in enumerate([[5] * 8, [3], [20, 7, 33], [manifest.max_length] * 2, [2, 2]]):
                padded = engine.padded_length(max(lengths))
                assert padded in plan.lengths
                batch = _batch(rng, lengths, padded)
                got = engine.run(batch, instance % 2)
                want = reference.run(batch, 0)
                for name in reference.output_names:
                    assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        finally:
            engine.close()
            reference.close()


def test_graphs_run_only_on_the_thread_that_captured_them(tiny_embed_dir: Path) -> None:
    # ONNX Runtime keeps CUDA graphs per thread: any other thread (start-up warm-up, profiling) runs the
    # batch as it is, without a graph, rather than capturing a second set.
    manifest = Manifest.load(tiny_embed_dir)
    plan = BucketPlan.build(8, manifest.max_length)
    engine = OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, plan, instances=2, backend=HostBackend(),
                                   cuda_graphs=True)
    try:
        assert engine.run_shape(3, 16, 0) == (NO_GRAPH, 3)  # not prepared yet: no graph anywhere
        seen: dict[str, tuple[int, int]] = {}

        def serve() -> None:
            engine.prepare_thread(0)
            seen["serving thread"] = engine.run_shape(3, 16, 0)

        thread = threading.Thread(target=serve)
        thread.start()
        thread.join()
        assert seen["serving thread"] == plan.graph_shape(3, 16) == (plan.graph_rows.index(4), 4)
        assert engine.run_shape(3, 16, 0) == (NO_GRAPH, 3)  # this thread did not capture them
        batch = _batch(np.random.default_rng(2), [5, 9, 3], 16)
        assert engine.run(batch, 0)[engine.output_names[0]].shape[0] == 3
    finally:
        engine.close()


def test_a_batch_not_padded_to_a_bucket_is_refused(tiny_embed_dir: Path) -> None:
    manifest = Manifest.load(tiny_embed_dir)
    engine = OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, BucketPlan.build(8, manifest.max_length),
                                   backend=HostBackend())
    try:
        with pytest.raises(ValueError, match="bucket lengths"):
            engine.run(_batch(np.random.default_rng(0), [5], 24), 0)
        with pytest.raises(ValueError, match="rows"):
            engine.run(_batch(np.random.default_rng(0), [5] * 9, 16), 0)
    finally:
        engine.close()


def test_a_session_that_fell_back_to_cpu_is_refused(tiny_embed_dir: Path) -> None:
    import onnxruntime as ort

    from millibatch.engines.onnxruntime_cuda import check_providers
    from millibatch.engines.select import EngineUnavailable

    manifest = Manifest.load(tiny_embed_dir)
    session = ort.InferenceSession(str(tiny_embed_dir / manifest.onnx_file), providers=["CPUExecutionProvider"])
    check_providers(session, "CPUExecutionProvider")
    with pytest.raises(EngineUnavailable, match=r"could not start CUDAExecutionProvider.*CPUExecutionProvider"):
        check_providers(session, "CUDAExecutionProvider")


def test_a_model_onnx_runtime_cannot_capture_is_served_without_graphs(tiny_embed_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # What onnxruntime-gpu 1.30 said on the H100 for a graph with nodes left on the CPU provider.
    refusal = ("[ONNXRuntimeError] : 1 : FAIL : This session cannot use the graph capture feature as requested "
               "by the user  as all compute graph nodes have not been partitioned to the CUDAExecutionProvider")
    real = OnnxRuntimeCudaEngine._new_session
    calls: list[int] = []

    def refuse_first(self: OnnxRuntimeCudaEngine, *args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(refusal)
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(OnnxRuntimeCudaEngine, "_new_session", refuse_first)
    manifest = Manifest.load(tiny_embed_dir)
    engine = OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, BucketPlan.build(8, manifest.max_length),
                                   instances=2, backend=HostBackend(), cuda_graphs=True)
    try:
        assert "no CUDA graphs: onnxruntime refused them" in engine.info.reason
        engine.prepare_thread(0)
        assert engine.run_shape(3, 16, 0) == (NO_GRAPH, 3)
        assert len(calls) == 3  # the refused session, then one per instance without graphs
    finally:
        engine.close()
    calls.clear()

    def fail(self: OnnxRuntimeCudaEngine, *args: object) -> object:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(OnnxRuntimeCudaEngine, "_new_session", fail)
    with pytest.raises(RuntimeError, match="out of memory"):  # any other failure is not hidden
        OnnxRuntimeCudaEngine(tiny_embed_dir / manifest.onnx_file, BucketPlan.build(8, manifest.max_length),
                              backend=HostBackend(), cuda_graphs=True)
