"""TensorRtEngine's host-side logic — profile per (instance, bucket), input shapes, tensor addresses, int32
inputs, fp16 outputs, buffer reuse — against a stand-in `tensorrt` module that really computes: its
context reads the bound input addresses, runs the ONNX graph with ONNX Runtime on CPU, and writes fp16
results to the bound output addresses. It checks every call against the active profile like TensorRT
does. The real TensorRT runtime is only exercised by the GPU tests."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from millibatch.engines.base import EngineInputs
from millibatch.engines.buckets import BucketPlan
from millibatch.engines.cuda_runtime import HostBackend, host_view
from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
from millibatch.engines.plans import PlanSpec
from millibatch.engines.tensorrt_engine import TensorRtEngine

BIG = 1 << 24  # host_view bound for fake device pointers; buffers are far smaller and views never exceed them


class FakeContext:
    """Enforces the TensorRT rules the engine relies on, and computes with ONNX Runtime."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.profile_switches = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles or index in self.engine.profiles_in_use - {
                self.profile}:
            return False
        self.engine.profiles_in_use.discard(self.profile)
        self.engine.profiles_in_use.add(index)
        self.profile, self.shapes, self.profile_switches = index, {}, self.profile_switches + 1
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def set_input_shape(self, name: str, shape: tuple[int, int]) -> bool:
        length = self.engine.spec.lengths[self.profile % len(self.engine.spec.lengths)]
        if not (1 <= shape[0] <= self.engine.spec.max_rows and shape[1] == length):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.input_names:
            return self.shapes[name]
        rows = self.shapes[self.engine.input_names[0]][0]
        return (rows, self.engine.output_dims[name])

    def execute_async_v3(self, stream: int) -> bool:
        assert set(self.shapes) == set(self.engine.input_names), "every input shape must be set"
        feeds = {name: host_view(self.addresses[name], BIG, np.int32, self.shapes[name]).astype(np.int64)
                 for name in self.engine.input_names}
        outputs = self.engine.session.run(None, feeds)
        for name, value in zip(self.engine.output_names, outputs, strict=True):
            host_view(self.addresses[name], BIG, np.float16, value.shape)[...] = value
        return True


class FakeEngine:
    """A 'plan' whose bytes are the path of an ONNX file; int32 inputs and fp16 outputs like many real plans."""

    def __init__(self, onnx_path: str, spec: PlanSpec) -> None:
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.spec = spec
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_dims = {o.name: int(o.shape[1]) for o in self.session.get_outputs()}
        self.num_optimization_profiles = spec.profile_count
        self.num_io_tensors = len(self.input_names) + len(self.output_names)
        self.profiles_in_use: set[int] = set()
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return (self.input_names + self.output_names)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.input_names else "output"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1) if name in self.input_names else (-1, self.output_dims[name])

    def get_tensor_dtype(self, name: str) -> Any:
        return np.int32 if name in self.input_names else np.float16

    def create_execution_context(self) -> FakeContext:
        context = FakeContext(self)
        # TensorRT gives a new context the first profile no other context uses.
        context.profile = min(set(range(self.num_optimization_profiles)) - self.profiles_in_use)
        self.profiles_in_use.add(context.profile)
        self.contexts.append(context)
        return context


def fake_tensorrt(spec: PlanSpec) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = spec.tensorrt_version  # type: ignore[attr-defined]
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    module.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")  # type: ignore[attr-defined]
    module.nptype = lambda dtype: dtype  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            engine = FakeEngine(data.decode(), spec)
            module.engines.append(engine)  # type: ignore[attr-defined]
            return engine

    module.Runtime = Runtime  # type: ignore[attr-defined]
    module.engines = []  # type: ignore[attr-defined]
    return module


@pytest.fixture
def plan_dir(tiny_embed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, PlanSpec]:
    manifest = Manifest.load(tiny_embed_dir)
    spec = PlanSpec("model.plan", "fp16", "10.7.0", (9, 0), instances=2, max_rows=8,
                    lengths=BucketPlan.build(8, manifest.max_length, (16, 32)).lengths)
    (tmp_path / spec.file).write_text(str(tiny_embed_dir / manifest.onnx_file))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(spec))
    return tmp_path, spec


def _batch(rng: np.random.Generator, lengths: list[int], padded: int) -> EngineInputs:
    ids = np.zeros((len(lengths), padded), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(1000, 30000, n)
        mask[r, :n] = 1
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def test_runs_each_bucket_on_its_own_profile_and_matches_onnxruntime(
        plan_dir: tuple[Path, PlanSpec], tiny_embed_dir: Path) -> None:
    directory, spec = plan_dir
    manifest = Manifest.load(tiny_embed_dir)
    engine = TensorRtEngine(directory, spec, instances=2, backend=HostBackend())
    reference = OnnxRuntimeCpuEngine(tiny_embed_dir / manifest.onnx_file)
    rng = np.random.default_rng(2)
    try:
        assert (engine.info.engine, engine.info.precision) == ("tensorrt", "fp16")
        for instance, lengths in [(0, [5] * 8), (1, [30, 2]), (0, [3]), (0, [4, 9]), (1, [manifest.max_length]),
                                  (0, [manifest.max_length, 1])]:
            padded = engine.padded_length(max(lengths))
            batch = _batch(rng, lengths, padded)
            got, want = engine.run(batch, instance), reference.run(batch, 0)
            for name in reference.output_names:
                assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
                # fp16 outputs: within half precision of the fp32 reference.
                np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=2e-3)
        (fake_engine,) = sys.modules["tensorrt"].engines  # type: ignore[attr-defined]
        contexts = fake_engine.contexts
        # Instance 0 ran bucket 16 three times, then the last: two switches; instance 1 ran 32, then the last.
        # Both end on the last bucket, each on its own profile (B-1 and 2B-1), as TensorRT requires.
        assert [c.profile_switches for c in contexts] == [2, 2]
        buckets = len(spec.lengths)
        assert [c.profile for c in contexts] == [buckets - 1, 2 * buckets - 1]
    finally:
        engine.close()
        reference.close()


def test_too_many_rows_is_a_clear_error(plan_dir: tuple[Path, PlanSpec]) -> None:
    directory, spec = plan_dir
    engine = TensorRtEngine(directory, spec, backend=HostBackend())
    try:
        with pytest.raises(ValueError, match="rows"):
            engine.run(_batch(np.random.default_rng(0), [5] * 9, 16), 0)
    finally:
        engine.close()


def test_a_plan_with_too_few_profiles_is_refused(plan_dir: tuple[Path, PlanSpec]) -> None:
    directory, spec = plan_dir
    sys.modules["tensorrt"].Runtime.deserialize_cuda_engine = (  # type: ignore[attr-defined]
        lambda self, data: types.SimpleNamespace(num_optimization_profiles=1))
    with pytest.raises(RuntimeError, match="1 optimization profiles"):
        TensorRtEngine(directory, spec, backend=HostBackend())
