"""A model directory: `model.onnx` (or TensorRT plans), `tokenizer.json` and `manifest.json`.

`convert` writes it, the server reads it. The manifest says everything the server needs to serve the
model without importing torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from millibatch.errors import InvalidInput

Task = Literal["embed", "classify", "token-classify", "sparse-embed"]
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a converted model is and how it was checked."""

    #: Served name (e.g. "all-MiniLM-L6-v2").
    name: str
    #: What the model does; decides which RPCs it answers.
    task: Task
    #: Longest input in tokens, special tokens included.
    max_length: int
    #: Embedding size, number of labels, or for sparse-embed the vocabulary size.
    dimensions: int
    #: Graph input names, in the order the engine feeds them.
    input_names: list[str]
    #: Graph output names; see engines/convert/export.py for their meaning per task.
    output_names: list[str]
    #: Labels by output index for classifiers.
    labels: list[str] = field(default_factory=list)
    #: Token pooling folded into the graph ("mean" or "cls"); empty for classifiers.
    pooling: str = ""
    #: Whether embeddings are L2-normalised unless the request says otherwise.
    normalize: bool = True
    #: Named prompts prepended to inputs on request (sentence-transformers' `prompts`, e.g. {"query": "query: "}).
    prompts: dict[str, str] = field(default_factory=dict)
    #: The prompt applied when a request names none (a key of `prompts`); empty for none.
    default_prompt_name: str = ""
    #: Numeric precision of the weights ("fp32", "fp16", "int8").
    precision: str = "fp32"
    #: Engine the artefacts are for ("onnxruntime" or "tensorrt").
    engine: str = "onnxruntime"
    #: ONNX file inside the directory.
    onnx_file: str = "model.onnx"
    #: Where the weights came from and their digest, so a served model can be traced to its source.
    source: str = ""
    source_hash: str = ""
    #: How the graph was optimised: fusion op counts, quantization method and fp32-kept nodes.
    optimizations: dict[str, Any] = field(default_factory=dict)
    #: TensorRT optimization profiles (one per length bucket): {"batch": [min, opt, max], "seq_len": [...]}.
    profiles: list[dict[str, list[int]]] = field(default_factory=list)
    #: TensorRT plan file inside the directory, when built.
    plan_file: str = ""
    #: Results of checking the converted model against PyTorch (max_abs_diff, min_cosine, stsb, ...).
    validation: dict[str, Any] = field(default_factory=dict)
    #: convert --benchmark: median ms of this variant beside fp32 and PyTorch (engines/convert/quick_bench.py).
    benchmark: dict[str, Any] = field(default_factory=dict)
    #: Serialized TensorRT engines and their profiles (layout: engines/plans.py).
    tensorrt_plans: list[dict[str, Any]] = field(default_factory=list)
    #: Manifest layout version.
    format_version: int = FORMAT_VERSION

    def prompt_text(self, prompt_name: str = "", prompt: str | None = None) -> str:
        """The text to prepend to every input of a request: its literal `prompt`, else the named prompt,
        else the model's default prompt (as sentence-transformers' encode); "" for none."""
        if prompt is not None:
            if prompt_name:
                raise InvalidInput("prompt_name and prompt are mutually exclusive; send one of them")
            return prompt
        name = prompt_name or self.default_prompt_name
        if not name:
            return ""
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise InvalidInput(f"model {self.name!r} has no prompt named {name!r} (its prompts: {known})")
        return self.prompts[name]

    def save(self, directory: Path) -> None:
        """Write manifest.json into `directory`."""
        (directory / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read manifest.json from `directory`, ignoring keys this version does not know."""
        raw = json.loads((directory / MANIFEST_NAME).read_text())
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def is_model_dir(path: Path) -> bool:
    """True when `path` holds a manifest (i.e. it was produced by `convert`)."""
    return (path / MANIFEST_NAME).is_file()
