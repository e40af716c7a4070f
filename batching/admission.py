"""Admission: decide at the door, in O(1), whether a request can still be answered before its deadline.

Under overload the cheapest refusal is the earliest one: a request refused here costs no tokenizing, no
queue slot and no scheduling, and its caller hears RESOURCE_EXHAUSTED at once instead of
DEADLINE_EXCEEDED a deadline later. The queue stays as deep as the deadlines can absorb, so every
admitted row can still ride in an efficient batch and scheduling stays cheap.

The wait a new request faces is predicted from a running tally of the engine time its predecessors
need: each admitted row adds its share of a backlog batch at its length (`row_seconds`, from the
cost model), each row that leaves the queue takes it away again. Spread over the instances, plus
what the running batches have left, that is the predicted wait. A correction factor learnt from how
long admitted requests really waited before their first batch (actual / predicted, recent requests
weighted most) absorbs what the cost model does not see, such as a busy event loop. Ideas taken from:
Clockwork (predict execution, refuse at arrival what cannot meet its SLO, rather than late), CoDel
(judge the queue by the time spent in it, not its length), Triton's queue policy (a bound on the
queue and a per-request timeout; here the timeout is each call's own deadline).

A request's own compute is part of its predicted finish, so near a full queue a short input still fits
where a long one does not: under overload long inputs are refused first (`own`, the default, which answers
the most calls). `typical` prices every request's compute at the typical length admitted lately instead,
so every length is refused alike (docs/OVERLOAD.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from millibatch.batching.cost_model import CostModel
from millibatch.batching.work import Row, WorkItem
from millibatch.errors import DeadlineUnmeetable, Overloaded, QueueFull, Refusal

#: Weight kept by the wait-correction sums per admitted request (about the last 50 requests count).
CORRECTION_DECAY = 0.98
#: Added to both sums so that near-zero waits (an idle server) leave the correction near 1.
CORRECTION_SMOOTHING = 0.002
#: The correction stays within these bounds: predictions are never trusted blindly, nor discarded.
CORRECTION_BOUNDS = (0.5, 4.0)
#: Slack: additive increase per request answered in time, multiplicative decrease per admitted request
#: that missed its deadline after all. In balance about one admitted request in a hundred misses.
SLACK_BOUNDS = (0.2, 1.0)
SLACK_INCREASE = 0.0002
SLACK_DECREASE = 0.95
#: Longest retry hint given to a refused caller (seconds): past this the estimate says little.
MAX_RETRY_AFTER = 60.0
#: Weight kept by the typical row length per admitted request (about the last 50 requests count), and its
#: value before any request was admitted (tokens).
TYPICAL_DECAY = 0.98
TYPICAL_START = 16.0

#: How the overload test prices a request's own compute: `own`, at its rows' own lengths (under a backlog a
#: short input still fits where a long one does not, so long inputs are refused first and the most calls are
#: answered); `typical`, as if every row had the typical length of those admitted lately (every length is
#: refused alike). Either way a request whose own compute cannot fit its deadline is refused.
AdmissionLength = Literal["own", "typical"]


class Admission:
    """The door of one model's queue, and the tally of admitted work not yet in a batch."""

    def __init__(self, cost: CostModel, padded_length: Callable[[int], int], capacity: Callable[[int], int],
                 max_queue_rows: int, instances: int, length: AdmissionLength = "own") -> None:
        self._cost = cost
        self._pad = padded_length
        self._capacity = capacity
        self.max_queue_rows = max_queue_rows
        self.instances = instances
        self.length: AdmissionLength = length
        #: Tokens per row of the requests admitted lately, recent ones weighted most (`length` typical).
        self.typical_tokens = TYPICAL_START
        #: Admitted rows not yet put in a batch, and the engine seconds they need (one instance).
        self.queued_rows = 0
        self.queued_seconds = 0.0
        #: Actual / predicted wait before the first batch, recent requests weighted most.
        self.correction = 1.0
        #: Share of what a request's own work leaves of its remaining time that the predicted wait for the
        #: queue ahead may take (see `outcome`).
        self.slack = SLACK_BOUNDS[1]
        self._actual = 0.0
        self._predicted = 0.0
        # Prices by padded length and least compute by request shape, for the cost model's current fit.
        self._row_seconds: dict[int, float] = cost.per_fit()
        self._least: dict[tuple[int, int], float] = cost.per_fit()

    def row_seconds(self, length: int) -> float:
        """Engine seconds one row of `length` tokens takes as its share of a full batch of its length
        (what a backlog of such rows costs per row)."""
        padded = self._pad(length)
        price = self._row_seconds.get(padded)
        if price is None:
            rows = self._capacity(padded)
            price = self._row_seconds[padded] = self._cost.predict(rows, padded) / rows
        return price

    def check(self, now: float, deadline: float, wait: float, margin: float, compute: float = 0.0,
              rows: int = 1) -> None:
        """Raise the `refusal` of a request, if it has one."""
        refusal = self.refusal(now, deadline, wait, margin, compute, rows)
        if refusal is not None:
            raise refusal

    def refusal(self, now: float, deadline: float, wait: float, margin: float,
                compute: float = 0.0, rows: int = 1) -> Refusal | None:
        """Why a request of `rows` inputs cannot be answered before `deadline`, or None if it can:
        DeadlineUnmeetable when its own `compute` seconds and the answer's trip back (`margin`) do not fit
        even with no queue, Overloaded when the predicted `wait` for the queue ahead makes it miss (its
        compute priced as `length` says). With `compute` unknown (0) this is the check made before any work
        is spent on a request. Returned, not raised: under overload most calls end here, and a raise through
        the callers' frames is a visible part of a refusal's cost."""
        remaining = deadline - now
        if compute + margin > remaining:
            return DeadlineUnmeetable(
                f"deadline too short: this request needs about {compute * 1e3:.1f} ms of compute and "
                f"{margin * 1e3:.1f} ms for its answer to reach it, and {max(0.0, remaining) * 1e3:.1f} ms remained"
            )
        if self.length == "typical":
            compute = self.least_seconds(rows, round(self.typical_tokens))
        expected = wait * self.correction
        # The slack limits the queue's share of what the request's own work leaves of its deadline, not that
        # work itself: were the work scaled too, a slack shrunk by misses could refuse every request that
        # fits alone, even on an idle server, and with nothing answered it would never regrow. With no
        # queue ahead nothing is refused here (a typical length longer than the deadline included).
        excess = expected - self.slack * max(0.0, remaining - compute - margin)
        if excess > 0:
            # The queue ahead drains in real time: once it has shrunk by `excess` (as predicted, corrected), a
            # call like this one would fit.
            return Overloaded(
                f"server busy: about {expected * 1e3:.0f} ms of queued work is ahead of this call and "
                f"{remaining * 1e3:.0f} ms remain before its deadline; retry later or elsewhere",
                retry_after=min(excess / self.correction, MAX_RETRY_AFTER),
            )
        return None

    def admit(self, rows: list[Row], deadline: float, now: float, wait: float, margin: float) -> float:
        """Reserve a request's `rows` or raise QueueFull, Overloaded (the queue ahead is too long for its
        deadline) or DeadlineUnmeetable (it cannot finish in time even alone). Returns the engine seconds
        reserved per row, which `dispatched` gives back."""
        count = len(rows)
        if self.queued_rows + count > self.max_queue_rows:
            raise QueueFull(f"queue full ({self.queued_rows} of {self.max_queue_rows} rows waiting); retry later")
        per_row = sum(self.row_seconds(row.length) for row in rows) / count
        longest = max(row.length for row in rows)
        self.check(now, deadline, wait, margin, self._own_seconds(count, longest, per_row), count)
        if self.length == "typical":
            self.typical_tokens = self.typical_tokens * TYPICAL_DECAY + (1 - TYPICAL_DECAY) * longest
        self.queued_rows += count
        self.queued_seconds += per_row * count
        return per_row

    def least_seconds(self, rows: int, tokens_per_row: int) -> float:
        """Least time `rows` rows of `tokens_per_row` tokens take once they reach the instances (priced
        once per shape and cost-model fit: this runs for every request, refused ones included)."""
        least = self._least.get((rows, tokens_per_row))
        if least is None:
            least = self._least[(rows, tokens_per_row)] = self._own_seconds(
                rows, tokens_per_row, self.row_seconds(tokens_per_row))
        return least

    def _own_seconds(self, rows: int, longest: int, per_row: float) -> float:
        """Least time the request's own rows take once they reach the instances: one batch of them (at
        most a full one, at their longest length), or their share of every instance's time."""
        padded = self._pad(longest)
        return max(self._cost.predict(min(rows, self._capacity(padded)), padded), rows * per_row / self.instances)

    def dispatched(self, item: WorkItem, rows: int = 1) -> None:
        """`rows` of `item` left the queue for a batch (or were dropped): their reservation ends."""
        rows = min(rows, item.waiting)
        if rows:
            item.waiting -= rows
            self.queued_rows -= rows
            self.queued_seconds = max(0.0, self.queued_seconds - rows * item.row_seconds)
            if not self.queued_rows:
                self.queued_seconds = 0.0  # no float drift survives an empty queue

    def outcome(self, missed: bool) -> None:
        """An admitted request was answered in time, or `missed` its deadline after all (shed, late, or
        its caller gave up). The mean correction leaves the tail of the waits to chance; how far ahead
        a request may be admitted is therefore steered by the misses themselves, as adaptive concurrency
        limits steer by latency: the slack shrinks on every miss and regrows slowly while answers are in
        time, so the queue holds what the deadlines can really absorb under the current load."""
        low, high = SLACK_BOUNDS
        if missed:
            self.slack = max(low, self.slack * SLACK_DECREASE)
        else:
            self.slack = min(high, self.slack + SLACK_INCREASE)

    def started(self, item: WorkItem, waited: float) -> None:
        """`item`'s first row reached an instance after `waited` seconds: learn how good the prediction was."""
        self._actual = self._actual * CORRECTION_DECAY + waited
        self._predicted = self._predicted * CORRECTION_DECAY + item.predicted_wait
        ratio = (self._actual + CORRECTION_SMOOTHING) / (self._predicted + CORRECTION_SMOOTHING)
        low, high = CORRECTION_BOUNDS
        self.correction = min(high, max(low, ratio))
