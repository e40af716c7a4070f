"""The ways bench/gpu.py runs one batch: millibatch's engine, a plain ONNX Runtime session, and PyTorch.

Each runner takes a padded batch (numpy, as the batcher hands it to an engine) and returns the first
output as float32 numpy on the host, so every one is timed and checked for the same work: host input in,
host answer out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from millibatch.engines.base import EngineInputs, FloatArray


class Runner(Protocol):
    """One way to run a batch."""

    #: What ran, in words (engine, device, precision, execution provider).
    description: str

    def padded_length(self, length: int) -> int:
        """The length a batch of `length` tokens is padded to."""
        ...

    def run(self, batch: EngineInputs) -> FloatArray:
        """The first output for `batch`, on the host."""
        ...

    def close(self) -> None:
        """Release the session and its memory."""
        ...


class EngineRunner:
    """millibatch's own engine (`engines.select.load_engine`), instance 0."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._output = engine.output_names[0]
        prepare = getattr(engine, "prepare_thread", None)
        if prepare is not None:  # this thread serves instance 0, as an engine thread would (CUDA graphs)
            prepare(0)
        info = engine.info
        self.description = f"{info.engine} on {info.device}, {info.precision}: {info.reason}"

    def padded_length(self, length: int) -> int:
        return int(self._engine.padded_length(length))

    def run(self, batch: EngineInputs) -> FloatArray:
        return self._engine.run(batch, 0)[self._output]

    def close(self) -> None:
        self._engine.close()


class PlainOrtRunner:
    """An InferenceSession as a user first writes it: default options, numpy feeds, `session.run`.
    ONNX Runtime copies inputs to the GPU and outputs back on its own, without IO binding."""

    def __init__(self, onnx_path: Path, provider: str) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(onnx_path), providers=[provider])
        used = self._session.get_providers()[0]
        if used != provider:
            raise RuntimeError(f"onnxruntime fell back to {used} instead of {provider}")
        self._names = [i.name for i in self._session.get_inputs()]
        self._output = self._session.get_outputs()[0].name
        self.description = f"plain onnxruntime session on {used}, default options, no IO binding"

    def padded_length(self, length: int) -> int:
        return length

    def run(self, batch: EngineInputs) -> FloatArray:
        feeds = {name: getattr(batch, name) for name in self._names}
        out = self._session.run([self._output], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        del self._session


class OrtIoBindingRunner(PlainOrtRunner):
    """IO binding as ONNX Runtime's own docs write it: `bind_cpu_input` (ORT copies to the device),
    outputs bound to the device and `copy_outputs_to_cpu`, on ORT's default stream, no cuda-python.
    Between `ort-plain` and millibatch's engine: if the engine trails this, its own streams and
    synchronisation are the cost; if this trails `ort-plain` too, IO binding itself is."""

    def __init__(self, onnx_path: Path, provider: str) -> None:
        super().__init__(onnx_path, provider)
        self._device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.description = f"onnxruntime session on {provider}, default options, ORT's own IO binding (bind_cpu_input)"

    def run(self, batch: EngineInputs) -> FloatArray:
        binding = self._session.io_binding()
        for name in self._names:
            binding.bind_cpu_input(name, getattr(batch, name))
        binding.bind_output(self._output, self._device)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


class TorchRunner:
    """The Hugging Face checkpoint in PyTorch (`torch.inference_mode`, SDPA attention), mean pooling as
    the exported embedding graph does; the peer a user tries first. fp16 on CUDA, fp32 on CPU."""

    def __init__(self, checkpoint: Path, device: str) -> None:
        import torch
        from transformers import AutoModel

        self._torch = torch
        self._device = torch.device(device)
        dtype = torch.float16 if device == "cuda" else torch.float32
        model = AutoModel.from_pretrained(str(checkpoint), dtype=dtype, attn_implementation="sdpa")
        self._model = model.to(self._device).eval()
        self.description = f"PyTorch {torch.__version__} on {device}, {str(dtype).removeprefix('torch.')}, SDPA"

    def padded_length(self, length: int) -> int:
        return length

    def run(self, batch: EngineInputs) -> FloatArray:
        torch = self._torch
        with torch.inference_mode():
            ids, mask, types = (torch.from_numpy(a).to(self._device, non_blocking=True)
                                for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
            hidden = self._model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            # .cpu() waits for the GPU, as the other runners' copies back do.
            return np.asarray(pooled.float().cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
        del self._model
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


def min_cosine(a: FloatArray, b: FloatArray) -> float:
    """Lowest row-wise cosine similarity between two output batches (pooled or per-token)."""
    a64 = a.reshape(a.shape[0], -1).astype(np.float64)
    b64 = b.reshape(b.shape[0], -1).astype(np.float64)
    cos = (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))
    return float(cos.min())
