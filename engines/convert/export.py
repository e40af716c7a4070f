"""Export a Hugging Face encoder to ONNX with its post-processing folded into the graph.

Outputs by task (all float32):
- embed: `embeddings` [rows, dim] pooled and L2-normalised; `pooled` [rows, dim] before normalising.
- classify: `logits` [rows, labels] and `probabilities` (softmax of logits).
- token-classify: `token_logits` [rows, tokens, labels] and `token_probabilities`, one row per word
  piece (the server merges pieces into entities).
- sparse-embed: `sparse_weights` [rows, vocab], SPLADE's max over the input's tokens of
  log(1 + ReLU(masked-LM logits)); padding tokens are masked out (engines/sparse.py makes it sparse).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from millibatch.engines.base import EngineInputs

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUTS_BY_TASK = {
    "embed": ["embeddings", "pooled"],
    "classify": ["logits", "probabilities"],
    "token-classify": ["token_logits", "token_probabilities"],
    "sparse-embed": ["sparse_weights"],
}
OPSET = 17


def load_reference(path: Path, task: str) -> Any:
    """The PyTorch model in eval mode, with the eager attention path (exports cleanly)."""
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    classes = {"classify": AutoModelForSequenceClassification, "token-classify": AutoModelForTokenClassification,
               "sparse-embed": AutoModelForMaskedLM}
    cls = classes.get(task, AutoModel)
    model, info = cls.from_pretrained(str(path), attn_implementation="eager", output_loading_info=True)
    if task == "sparse-embed" and info["missing_keys"]:
        # A checkpoint without a masked-LM head would get a random one: every weight would be noise.
        raise ValueError(f"--task sparse-embed needs a masked-LM checkpoint (e.g. BertForMaskedLM); {path} has "
                         f"no weights for {', '.join(sorted(info['missing_keys'])[:3])}")
    return model.eval()


def splade_weights(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """SPLADE's pooling: max over tokens of log(1 + ReLU(logits)) [rows, tokens, vocab] → [rows, vocab].
    The weights are ≥ 0, so zeroing padding tokens keeps them out of the max."""
    import torch

    weights = torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1).to(logits.dtype)
    return weights.amax(dim=1)


def build_head(model: Any, task: str, pooling: str = "mean") -> torch.nn.Module:
    """Wrap `model` so that it returns exactly the graph outputs of OUTPUTS_BY_TASK[task]."""
    import torch

    class EmbedHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1), pooled

    class ClassifyHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
            return logits, torch.softmax(logits, dim=-1)

    class SparseHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor]:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
            return (splade_weights(logits, attention_mask),)

    # ClassifyHead serves both classifiers: the softmax over the last axis is per sequence for
    # classify and per token for token-classify.
    heads = {"embed": EmbedHead, "sparse-embed": SparseHead}
    head = heads.get(task, ClassifyHead)()
    # A fresh Module starts in training mode and export restores that mode afterwards, which would
    # switch dropout back on in the reference model.
    return head.eval()


def run_reference(head: torch.nn.Module, batch: EngineInputs) -> np.ndarray:
    """`head`'s first output for an encoded batch, as numpy: the PyTorch answer variants are checked
    and timed against."""
    import torch

    with torch.no_grad():
        tensors = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
        return head(*tensors)[0].numpy()


def export_onnx(head: torch.nn.Module, task: str, out_file: Path) -> None:
    """Trace `head` to ONNX with dynamic batch and sequence axes."""
    output_axes = {0: "batch", 1: "sequence"} if task == "token-classify" else {0: "batch"}
    trace_onnx(head, out_file, OUTPUTS_BY_TASK[task], output_axes)


def trace_onnx(module: torch.nn.Module, out_file: Path, output_names: list[str], output_axes: dict[int, str]) -> None:
    """Trace `module`, which takes INPUT_NAMES, to ONNX at OPSET: inputs with dynamic batch and sequence
    axes, every output with `output_axes`."""
    import torch

    example = torch.ones(2, 16, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes.update({name: dict(output_axes) for name in output_names})
    # Tracing warns about every Python branch on a tensor in the model code; validation after export
    # checks the graph on real inputs, which is what those warnings are about.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example, example, torch.zeros_like(example)),
            str(out_file),
            input_names=INPUT_NAMES,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
