"""The manifest layout for TensorRT plans in a model directory (written by build/, read by the engine).

`manifest.json` gets a `tensorrt_plans` list; each entry describes one serialized engine (`*.plan`):

    {"file": "model.sm90.fp16.plan", "precision": "fp16", "tensorrt_version": "10.7.0",
     "compute_capability": [9, 0], "instances": 2, "max_rows": 32, "lengths": [16, 32, 64, 128, 256]}

The plan holds `instances * len(lengths)` optimization profiles, instance-major (see
`BucketPlan.profile_index`), each fixing the sequence length to one bucket with rows 1..max_rows.
A plan only runs on the GPU architecture and TensorRT version it was built with, hence those fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from millibatch.engines.buckets import BucketPlan
from millibatch.engines.model_dir import MANIFEST_NAME

#: Manifest key holding the list of plan entries.
MANIFEST_KEY = "tensorrt_plans"


@dataclass(frozen=True)
class PlanSpec:
    """One TensorRT plan file and the shapes, GPU and TensorRT version it was built for."""

    #: Plan file inside the model directory.
    file: str
    #: "fp32", "fp16" or "int8".
    precision: str
    #: TensorRT version that built it ("10.7.0"); plans load only with the same major.minor.
    tensorrt_version: str
    #: GPU compute capability it was built for, e.g. (9, 0).
    compute_capability: tuple[int, int]
    #: Execution contexts it has profiles for (one profile set per context).
    instances: int
    #: Most rows per call in every profile.
    max_rows: int
    #: Sequence-length buckets, ascending; one profile per bucket per instance.
    lengths: tuple[int, ...]

    @property
    def buckets(self) -> BucketPlan:
        """The bucket plan the profiles were built from."""
        return BucketPlan(tuple(self.lengths), self.max_rows)

    @property
    def profile_count(self) -> int:
        """Optimization profiles the plan must contain."""
        return self.instances * len(self.lengths)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this plan."""
        raw = asdict(self)
        raw["compute_capability"] = list(self.compute_capability)
        raw["lengths"] = list(self.lengths)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PlanSpec:
        """Parse a manifest entry; raises ValueError naming what is wrong."""
        try:
            major, minor = (int(x) for x in raw["compute_capability"])
            lengths = tuple(int(n) for n in raw["lengths"])
            spec = cls(file=str(raw["file"]), precision=str(raw["precision"]),
                       tensorrt_version=str(raw["tensorrt_version"]), compute_capability=(major, minor),
                       instances=int(raw["instances"]), max_rows=int(raw["max_rows"]), lengths=lengths)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad {MANIFEST_KEY} entry {raw!r}: {exc}") from exc
        if not lengths or list(lengths) != sorted(set(lengths)) or spec.instances < 1 or spec.max_rows < 1:
            raise ValueError(f"bad {MANIFEST_KEY} entry {raw!r}: need ascending lengths, instances>=1, max_rows>=1")
        return spec

    def mismatch(
        self, tensorrt_version: str, compute_capability: tuple[int, int], instances: int, max_rows: int = 1,
        max_length: int = 0,
    ) -> str | None:
        """Why this plan cannot run here with `instances` contexts, batches of `max_rows` rows and inputs of
        `max_length` tokens (0: unchecked), or None when it can."""
        if tuple(self.compute_capability) != tuple(compute_capability):
            return (f"plan {self.file} was built for sm_{self.compute_capability[0]}{self.compute_capability[1]}, "
                    f"this GPU is sm_{compute_capability[0]}{compute_capability[1]}")
        if _major_minor(self.tensorrt_version) != _major_minor(tensorrt_version):
            return f"plan {self.file} was built with TensorRT {self.tensorrt_version}, installed is {tensorrt_version}"
        if instances > self.instances:
            return f"plan {self.file} has profiles for {self.instances} instances, {instances} requested"
        if max_rows > self.max_rows:
            return f"plan {self.file} takes batches of up to {self.max_rows} rows, max_batch_rows is {max_rows}"
        if max_length > self.lengths[-1]:
            return f"plan {self.file} takes up to {self.lengths[-1]} tokens, the model's max_length is {max_length}"
        return None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def load_plan_specs(model_dir: Path) -> list[PlanSpec]:
    """The plans a model directory's manifest lists (empty when it lists none)."""
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        return []
    entries = json.loads(path.read_text()).get(MANIFEST_KEY) or []
    return [PlanSpec.from_json(e) for e in entries]


def pick_plan(
    plans: list[PlanSpec], tensorrt_version: str, compute_capability: tuple[int, int], instances: int,
    model_dir: Path, max_rows: int = 1, max_length: int = 0,
) -> tuple[PlanSpec | None, str]:
    """The first listed plan that runs here, or None and why none does."""
    if not plans:
        return None, "the model directory lists no TensorRT plans (build one with the TensorRT build step)"
    problems = []
    for plan in plans:
        problem = plan.mismatch(tensorrt_version, compute_capability, instances, max_rows, max_length)
        if problem is None and not (model_dir / plan.file).is_file():
            problem = f"plan file {plan.file} is missing"
        if problem is None:
            return plan, f"plan {plan.file} ({plan.precision})"
        problems.append(problem)
    return None, "; ".join(problems)
