"""Which rows go into the next batch, and whether to send it now: pure logic on a given clock value.

Earliest deadline first: the most urgent live row heads the batch, then rows are added in deadline
order when they (a) fit the row and padded-token budgets, (b) keep padding within the grouping ratio
or cost less together than apart (per-call overhead outweighs a little padding), and (c) leave every
chosen row's deadline reachable by the cost model. A row whose deadline cannot be met even if run next
is shed before any compute is spent on it; when enough rows of a similar length wait, "run next" means
in an efficient batch, so overload sheds the hopeless few instead of shrinking every batch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from millibatch.batching.cost_model import CostModel
from millibatch.batching.work import PendingRow, WorkItem

Policy = Literal["deadline", "fifo"]


@dataclass(frozen=True)
class BatchLimits:
    """Budgets and timing for batch formation."""

    #: "deadline": earliest deadline first with shedding, length grouping and cost-model waits.
    #: "fifo": arrival order, always wait `max_delay` for a full batch, no shedding (the classic
    #: fixed-delay dynamic batcher, kept as a baseline for benchmarks).
    policy: Policy = "deadline"
    #: Most rows in one engine call.
    max_rows: int = 32
    #: Most padded tokens (rows x padded length) in one engine call.
    max_tokens: int = 8192
    #: Longest a row waits for company once an engine instance is free (seconds).
    max_delay: float = 0.002
    #: Padded tokens may exceed the rows' own (individually padded) tokens by this factor.
    max_padding_ratio: float = 1.10
    #: Rows examined per decision, so a deep queue cannot make scheduling slow.
    scan_window: int = 256
    #: Margin kept between predicted finish and deadline (seconds); the batcher adds the measured time
    #: from a row's result to its caller's answer (`Scheduler.margin`).
    safety: float = 0.0005
    #: Time constant of the arrival-rate estimate (seconds).
    rate_window: float = 0.1
    #: Under a backlog, a row must fit its deadline in a batch this efficient (per-row throughput as a
    #: fraction of the best for its length) or be shed: serving nearly-late rows one by one would
    #: starve everyone else (earliest-deadline-first's domino effect under overload).
    overload_efficiency: float = 0.8
    #: A batch stops growing once its per-row throughput is within this fraction of the best the cost
    #: model predicts for its length: beyond that, more rows add latency for little throughput (on a CPU
    #: ~8 short rows; on a GPU, where per-call overhead dominates, far more). 1.0 lets batches fill up.
    growth_efficiency: float = 0.9


@dataclass
class Decision:
    """The scheduler's answer: a batch to run now, items to shed, and when to look again."""

    #: Rows to run now, most urgent first; empty when the scheduler wants to wait.
    batch: list[PendingRow] = field(default_factory=list)
    #: Length the batch is padded to.
    padded_length: int = 0
    #: Items that cannot meet their deadline: answer DEADLINE_EXCEEDED without computing.
    shed: list[WorkItem] = field(default_factory=list)
    #: When waiting, the clock value at which to decide again even without new arrivals.
    wait_until: float | None = None


class Scheduler:
    """Deadline-ordered queue of rows with batch formation; no asyncio, time is passed in."""

    def __init__(self, limits: BatchLimits, cost: CostModel, padded_length: Callable[[int], int]) -> None:
        self.limits = limits
        self.cost = cost
        self._pad = padded_length
        self._pending: list[PendingRow] = []
        self._sequence = 0
        self._dead = 0  # rows of finished items still physically queued
        self._rate = 0.0
        self._rate_at = 0.0
        self._capacities: dict[int, int] = cost.per_fit()
        #: Seconds kept between predicted finish and deadline: `limits.safety` plus, set by the batcher,
        #: how long a computed row takes to reach its caller (longer when the event loop is busy).
        self.margin = limits.safety

    @property
    def queued_rows(self) -> int:
        """Rows still waiting for a batch (rows of cancelled or failed items excluded)."""
        return len(self._pending) - self._dead

    @property
    def arrival_rate(self) -> float:
        """Recent arrivals in rows per second (exponentially decayed)."""
        return self._rate

    def add(self, item: WorkItem, now: float) -> None:
        """Queue every row of `item`."""
        fifo = self.limits.policy == "fifo"
        for index, row in enumerate(item.rows):
            self._sequence += 1
            pending = PendingRow(item, index, row.length, item.deadline, self._sequence, self._pad(row.length))
            if fifo:
                self._pending.append(pending)
            else:
                bisect.insort(self._pending, pending, key=lambda r: r.key)
        item.queued = len(item.rows)
        self._note_arrivals(len(item.rows), now)

    def forget(self, item: WorkItem) -> None:
        """`item` finished early (cancelled, shed, failed): its queued rows no longer count."""
        if not item.forgotten:
            item.forgotten = True
            self._dead += item.queued
            if self._dead > 64 and self._dead * 2 > len(self._pending):
                self._compact()

    def take_all(self) -> list[WorkItem]:
        """Empty the queue, returning the live items that were waiting (for shutdown)."""
        items = {id(r.item): r.item for r in self._pending if r.item.live}
        for r in self._pending:
            self._remove(r)
        self._pending.clear()
        return list(items.values())

    def next(self, now: float, *, flush: bool = False, only_full: bool = False) -> Decision:
        """Decide at clock `now`. With `flush`, never wait for more rows (draining). With `only_full`,
        return a batch only if it is already full (preparing one ahead while every instance is busy)."""
        limits = self.limits
        window = self._pending[: limits.scan_window]
        decision = Decision()
        shed_ids: set[int] = set()
        live: list[PendingRow] = []
        removed: set[int] = set()
        deadline_aware = limits.policy == "deadline"
        # Padded lengths of the waiting rows: how many could share a batch with a given row.
        backlog = sorted(row.padded for row in window if row.item.live) if deadline_aware else []
        # Engine seconds a row of each padded length needs in the batch it would ride in: the same for
        # every row of that length in this decision, so worked out once per length.
        needs: dict[int, float] = {}
        for row in window:
            item = row.item
            if not item.live or id(item) in shed_ids:
                removed.add(id(row))
            elif deadline_aware and not self._meetable(row, backlog, now, needs):
                shed_ids.add(id(item))
                decision.shed.append(item)
                removed.add(id(row))
            else:
                live.append(row)
        if live:
            if deadline_aware:
                self._choose(live, now, decision, backlog)
            else:
                self._choose_fifo(live, now, decision)
            if only_full and decision.batch and not self._is_full(decision):
                decision.batch = []
            elif decision.batch and not flush and not self._should_send(decision, now):
                decision.wait_until = self._send_by(decision, now)
                decision.batch = []
            removed.update(id(r) for r in decision.batch)
        if removed:
            kept = [r for r in window if id(r) not in removed]
            for r in window:
                if id(r) in removed:
                    self._remove(r)
            self._pending[: len(window)] = kept
        return decision

    def _own_batch_rows(self, length: int, backlog: list[int]) -> int:
        """Rows a row of padded `length` would share a batch with if grouped by length: one when few
        similar rows wait, up to an efficient batch when a backlog of them does."""
        similar = bisect.bisect_right(backlog, length) - bisect.bisect_left(
            backlog, length / self.limits.max_padding_ratio
        )
        efficient = self.cost.efficient_rows(length, self.limits.overload_efficiency)
        return max(1, min(efficient, similar, self.capacity(length)))

    def _meetable(self, row: PendingRow, backlog: list[int], now: float, needs: dict[int, float]) -> bool:
        """Can `row` still finish in time, in the batch it would ride in? (`needs`: that batch's engine
        seconds by padded length, filled as lengths come up.)"""
        length = row.padded
        seconds = needs.get(length)
        if seconds is None:
            seconds = needs[length] = self.cost.predict(self._own_batch_rows(length, backlog), length)
        return now + seconds + self.margin <= row.deadline

    def _choose(self, live: list[PendingRow], now: float, decision: Decision, backlog: list[int]) -> None:
        limits, predict = self.limits, self.cost.predict
        head = live[0]
        length = head.padded
        chosen = [head]
        ideal_tokens = length  # tokens if each row were padded on its own
        earliest = head.deadline
        for row in live[1:]:
            if len(chosen) >= limits.max_rows:
                break
            own = row.padded
            new_length = max(length, own)
            if len(chosen) >= self._worthwhile_rows(new_length):
                continue
            rows = len(chosen) + 1
            if rows * new_length > limits.max_tokens:
                continue
            if rows * new_length > limits.max_padding_ratio * (ideal_tokens + own):
                # Too much padding, unless adding the row costs less than its share of the batch it
                # would otherwise ride in (alone at low load, among similar rows under a backlog).
                apart = self._own_batch_rows(own, backlog)
                if predict(rows, new_length) - predict(rows - 1, length) > predict(apart, own) / apart:
                    continue
            if now + predict(rows, new_length) + self.margin > min(earliest, row.deadline):
                continue
            chosen.append(row)
            length, ideal_tokens, earliest = new_length, ideal_tokens + own, min(earliest, row.deadline)
        decision.batch = chosen
        decision.padded_length = length

    def _choose_fifo(self, live: list[PendingRow], now: float, decision: Decision) -> None:
        """Oldest rows first, as many as fit the budgets; no grouping, no deadline checks."""
        limits = self.limits
        chosen: list[PendingRow] = []
        length = 0
        for row in live:
            new_length = max(length, row.padded)
            if len(chosen) >= limits.max_rows or (len(chosen) + 1) * new_length > limits.max_tokens:
                break
            chosen.append(row)
            length = new_length
        decision.batch = chosen
        decision.padded_length = length

    def _worthwhile_rows(self, length: int) -> int:
        """Most rows worth putting in one batch of `length` (see BatchLimits.growth_efficiency)."""
        if self.limits.growth_efficiency >= 1.0:
            return self.limits.max_rows
        return self.cost.efficient_rows(length, self.limits.growth_efficiency)

    def capacity(self, length: int) -> int:
        """Rows at which a batch of `length` counts as full (sent without waiting for more). Asked for
        every waiting row at every decision (and by admission for every request), so it is worked out
        once per length and cost-model fit."""
        rows = self._capacities.get(length)
        if rows is None:
            rows = self._capacities[length] = max(
                1, min(self.limits.max_rows, self.limits.max_tokens // length, self._worthwhile_rows(length)))
        return rows

    def _send_by(self, decision: Decision, now: float) -> float:
        """Latest clock value to send: the oldest row's max delay, and the earliest deadline still met
        if the batch grew to its full capacity while waiting."""
        length = decision.padded_length
        oldest = min(r.item.enqueued_at for r in decision.batch)
        if self.limits.policy == "fifo":
            return oldest + self.limits.max_delay
        earliest = min(r.deadline for r in decision.batch)
        full_cost = self.cost.predict(self.capacity(length), length)
        return min(oldest + self.limits.max_delay, earliest - full_cost - self.margin)

    def _is_full(self, decision: Decision) -> bool:
        return len(decision.batch) >= self.capacity(decision.padded_length)

    def _should_send(self, decision: Decision, now: float) -> bool:
        if self._is_full(decision):
            return True
        wait = self._send_by(decision, now) - now
        if self.limits.policy == "fifo":  # the classic batcher always waits out its delay
            return wait <= 0
        if wait <= 0:
            return True
        # Waiting only pays if company is likely to arrive in time; otherwise it is pure latency.
        self._decay_rate(now)
        return self._rate * wait < 1.0

    def _note_arrivals(self, rows: int, now: float) -> None:
        self._decay_rate(now)
        self._rate += rows / self.limits.rate_window

    def _decay_rate(self, now: float) -> None:
        elapsed = now - self._rate_at
        if elapsed > 0:
            self._rate *= math.exp(-elapsed / self.limits.rate_window)
            self._rate_at = now

    def _remove(self, row: PendingRow) -> None:
        item = row.item
        item.queued -= 1
        if item.forgotten:
            self._dead -= 1

    def _compact(self) -> None:
        kept = []
        for r in self._pending:
            if r.item.live:
                kept.append(r)
            else:
                self._remove(r)
        self._pending = kept
