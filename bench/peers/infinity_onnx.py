"""The checkpoint infinity-emb's ONNX engine (`--engine optimum`) loads: the source checkpoint's files beside a
`model.onnx` that returns the encoder's `last_hidden_state`, as the ONNX exports published with Hugging Face
checkpoints do (infinity pools and normalizes itself). millibatch's own `model.onnx` pools inside the graph, so
infinity cannot load it; optimum's exporter does not import with the pinned torch 2.13, so the graph is traced
here by `millibatch convert`'s own tracer (fp32, opset 17, no offline fusion)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from millibatch.engines.convert.export import load_reference, trace_onnx

OUTPUT_NAME = "last_hidden_state"


def hidden_state_checkpoint(source: Path, folder: Path) -> Path:
    """`folder` holding links to `source`'s files (its weights left out) and a hidden-state `model.onnx`;
    made once, then reused."""
    if (folder / "model.onnx").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for item in source.iterdir():
            if item.suffix not in (".safetensors", ".bin", ".onnx") and item.name != "onnx":
                (staging / item.name).symlink_to(item.resolve())
        export_hidden_state(source, staging / "model.onnx")
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def export_hidden_state(source: Path, out_file: Path) -> None:
    """Trace the encoder at `source` to ONNX with `last_hidden_state` as its one output, batch and sequence
    axes dynamic."""
    import torch

    model = load_reference(source, "embed")

    class HiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    trace_onnx(HiddenState().eval(), out_file, [OUTPUT_NAME], {0: "batch", 1: "sequence"})
