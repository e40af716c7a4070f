"""Engine selection: the pure rules with every kind of machine, then the real probe on this one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_engine import MAX_AUTO_INSTANCES, OnnxRuntimeCpuEngine, auto_instances, usable_cores
from millibatch.engines.plans import PlanSpec
from millibatch.engines.select import Capabilities, EngineOptions, EngineUnavailable, choose, load_engine, probe

CPU_ONLY = Capabilities(ort_providers=("CPUExecutionProvider",), cuda_python=False, cuda_devices=0)
GPU = Capabilities(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"), cuda_python=True,
                   cuda_devices=1, compute_capability=(9, 0))
PLAN = PlanSpec("model.plan", "fp16", "10.7.0", (9, 0), instances=2, max_rows=32, lengths=(16, 128))


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    (tmp_path / PLAN.file).write_bytes(b"serialized engine")
    return tmp_path


def test_auto_on_a_cpu_machine_runs_onnxruntime_on_cpu_and_says_why(tmp_path: Path) -> None:
    choice = choose(EngineOptions(), CPU_ONLY, tmp_path)
    assert (choice.engine, choice.device) == ("onnxruntime", "cpu")
    assert choice.reason.startswith("auto: ONNX Runtime on CPU because")
    assert "CUDAExecutionProvider" in choice.reason


def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"device 'cuda'.*no CUDAExecutionProvider.*millibatch\[gpu\]"):
        choose(EngineOptions(device="cuda"), CPU_ONLY, tmp_path)
    no_device = replace(GPU, cuda_devices=0, compute_capability=None)
    with pytest.raises(EngineUnavailable, match="no CUDA GPU is visible"):
        choose(EngineOptions(engine="onnxruntime", device="cuda"), no_device, tmp_path)
    no_cuda_python = replace(GPU, cuda_python=False)
    with pytest.raises(EngineUnavailable, match="cuda-python is not installed"):
        choose(EngineOptions(device="cuda"), no_cuda_python, tmp_path)


def test_tensorrt_without_the_package_or_on_cpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="tensorrt Python package is not installed"):
        choose(EngineOptions(engine="tensorrt"), GPU, tmp_path)
    with pytest.raises(EngineUnavailable, match="runs only on CUDA"):
        choose(EngineOptions(engine="tensorrt", device="cpu"), GPU, tmp_path)
    with pytest.raises(EngineUnavailable, match="no CUDA GPU"):
        choose(EngineOptions(engine="tensorrt"), replace(CPU_ONLY, cuda_python=True), tmp_path)


def test_auto_prefers_a_matching_plan_then_ort_cuda_then_cpu(plan_dir: Path) -> None:
    trt = replace(GPU, tensorrt_version="10.7.2", plans=[PLAN])
    best = choose(EngineOptions(), trt, plan_dir)
    assert (best.engine, best.device, best.plan) == ("tensorrt", "cuda", PLAN)
    assert "model.plan" in best.reason

    other_gpu = replace(trt, compute_capability=(8, 6))
    fallback = choose(EngineOptions(), other_gpu, plan_dir)
    assert (fallback.engine, fallback.device) == ("onnxruntime", "cuda")
    assert "sm_90" in fallback.reason and "sm_86" in fallback.reason
    with pytest.raises(EngineUnavailable, match="sm_86"):
        choose(EngineOptions(engine="tensorrt"), other_gpu, plan_dir)

    no_plan = choose(EngineOptions(device="cuda"), GPU, plan_dir)
    assert (no_plan.engine, no_plan.device) == ("onnxruntime", "cuda")
    assert "tensorrt Python package" in no_plan.reason


def test_explicit_choices_are_honoured(plan_dir: Path) -> None:
    assert choose(EngineOptions(device="cpu"), GPU, plan_dir).device == "cpu"
    assert choose(EngineOptions(engine="onnxruntime"), GPU, plan_dir).device == "cuda"
    assert choose(EngineOptions(engine="onnxruntime"), CPU_ONLY, plan_dir).device == "cpu"
    trt = replace(GPU, tensorrt_version="10.7.0", plans=[PLAN])
    assert choose(EngineOptions(engine="onnxruntime", device="cuda"), trt, plan_dir).engine == "onnxruntime"
    assert choose(EngineOptions(engine="tensorrt", device="cuda"), trt, plan_dir).engine == "tensorrt"
    with pytest.raises(EngineUnavailable, match="3 requested"):
        choose(EngineOptions(engine="tensorrt", instances=3), trt, plan_dir)


def test_real_probe_and_load_on_this_machine(tiny_embed_dir: Path) -> None:
    caps = probe(tiny_embed_dir)
    if caps.cuda_devices:
        pytest.skip("this machine has a CUDA GPU; the CPU-only expectations below do not apply")
    manifest = Manifest.load(tiny_embed_dir)
    engine = load_engine(tiny_embed_dir, manifest, EngineOptions())
    try:
        assert isinstance(engine, OnnxRuntimeCpuEngine)
        assert engine.info.reason.startswith("auto: ONNX Runtime on CPU because")
        # instances 0 = one per core (up to 4); the CPU pads only to the batch's longest row.
        assert engine.info.instances == auto_instances() == min(usable_cores(), MAX_AUTO_INSTANCES)
        assert engine.padded_length(13) == 13
    finally:
        engine.close()
    with pytest.raises(EngineUnavailable, match="device 'cuda'"):
        load_engine(tiny_embed_dir, manifest, EngineOptions(device="cuda"))
    with pytest.raises(EngineUnavailable, match="engine 'tensorrt' cannot run"):
        load_engine(tiny_embed_dir, manifest, EngineOptions(engine="tensorrt"))


def test_auto_serves_on_cpu_when_the_cuda_provider_cannot_start(tiny_embed_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime-gpu lists CUDAExecutionProvider even where libcublas or libcudnn is missing.
    from millibatch.engines import select

    def cuda_fails(*args: object, **kwargs: object) -> None:
        raise EngineUnavailable("onnxruntime could not start CUDAExecutionProvider")

    monkeypatch.setattr(select, "probe", lambda model_dir: GPU)
    monkeypatch.setattr(select, "_load_ort_cuda", cuda_fails)
    manifest = Manifest.load(tiny_embed_dir)
    engine = load_engine(tiny_embed_dir, manifest, EngineOptions())
    try:
        assert isinstance(engine, OnnxRuntimeCpuEngine) and engine.info.instances == auto_instances()
        assert engine.info.reason.startswith("auto: ONNX Runtime on CPU because onnxruntime could not start")
    finally:
        engine.close()
    for explicit in (EngineOptions(device="cuda"), EngineOptions(ort_tensorrt_provider=True)):
        with pytest.raises(EngineUnavailable, match="could not start"):
            load_engine(tiny_embed_dir, manifest, explicit)
