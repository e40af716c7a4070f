"""What travels through the batcher: a request's rows, its deadline, its future and its timings."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Row:
    """One tokenized input: ids and token type ids (the attention mask is all ones up to its length)."""

    ids: IntArray
    type_ids: IntArray

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class RowResult:
    """A row's output: index `row` of each array in the batch's `outputs`."""

    outputs: dict[str, npt.NDArray[np.float32]]
    row: int
    #: The row's own token count; per-token outputs are padded past it to the batch's length.
    length: int

    def get(self, name: str) -> npt.NDArray[np.float32]:
        return self.outputs[name][self.row]

    def tokens(self, name: str) -> npt.NDArray[np.float32]:
        """A per-token output ([rows, padded length, ...] in the batch) cut back to this row's tokens."""
        return self.outputs[name][self.row, : self.length]


@dataclass(eq=False, slots=True)
class WorkItem:
    """One request in the batcher. Its rows may ride in several batches; the future resolves with all
    of them, in input order, or with the first error."""

    #: Tokenized inputs, in request order.
    rows: list[Row]
    #: Absolute time (time.monotonic, the event loop's clock) by which the answer must be sent.
    deadline: float
    #: Resolved by the batcher; cancelled by the caller if it goes away.
    future: asyncio.Future[list[RowResult]]
    #: When the item was admitted (time.monotonic).
    enqueued_at: float
    #: Request id for logs.
    id: int = field(default_factory=lambda: next(_ids))
    #: When its first row was put in a batch.
    first_batched_at: float | None = None
    #: When its last row finished computing.
    computed_at: float | None = None
    #: Seconds of engine time of the batches it rode in.
    inference_seconds: float = 0.0
    #: Ids of those batches.
    batch_ids: list[int] = field(default_factory=list)
    #: Per-row results, filled as batches complete.
    results: list[RowResult | None] = field(default_factory=list)
    #: Rows not yet computed.
    remaining: int = 0
    #: Rows still waiting in the scheduler's queue.
    queued: int = 0
    #: Set once the scheduler stopped counting this (finished) item's queued rows.
    forgotten: bool = False
    # -- admission's reservation (batching/admission.py) --
    #: Rows admitted and not yet in a batch, and the engine seconds reserved for each.
    waiting: int = 0
    row_seconds: float = 0.0
    #: The wait before its first batch that admission predicted (for its feedback).
    predicted_wait: float = 0.0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.rows)
        self.remaining = len(self.rows)

    @property
    def live(self) -> bool:
        """False once answered, failed or cancelled: its rows must not be computed."""
        return not self.future.done()

    @property
    def queue_seconds(self) -> float:
        return 0.0 if self.first_batched_at is None else self.first_batched_at - self.enqueued_at


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A row waiting in the scheduler."""

    item: WorkItem
    index: int
    length: int
    deadline: float
    sequence: int
    #: The engine's padded length for `length`, worked out once on arrival.
    padded: int

    @property
    def key(self) -> tuple[float, int]:
        """Earliest deadline first; arrival order breaks ties."""
        return (self.deadline, self.sequence)
