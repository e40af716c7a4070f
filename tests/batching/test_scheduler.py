"""Scheduler decisions on a fake clock with a known cost function."""

from __future__ import annotations

from millibatch.batching.cost_model import CostModel
from millibatch.batching.scheduler import BatchLimits, Scheduler
from millibatch.engines.base import round_up
from tests.batching.fakes import exact_cost_model, make_item, true_cost


def scheduler(**limits: float) -> Scheduler:
    return Scheduler(BatchLimits(**limits), exact_cost_model(), lambda n: round_up(n, 8))  # type: ignore[arg-type]


def test_earliest_deadline_heads_the_batch() -> None:
    s = scheduler(max_delay=0.0)
    late = make_item([10], deadline=1.0)
    urgent = make_item([10], deadline=0.5)
    s.add(late, 0.0)
    s.add(urgent, 0.0)
    decision = s.next(0.0)
    assert [r.item for r in decision.batch] == [urgent, late]


def test_batch_respects_row_and_padded_token_budgets() -> None:
    s = scheduler(max_rows=4, max_tokens=64, max_delay=0.0)
    for _ in range(10):
        s.add(make_item([16], deadline=10.0), 0.0)
    first = s.next(0.0)
    assert len(first.batch) == 4 and first.padded_length == 16  # 4 x 16 = 64 tokens
    s2 = scheduler(max_rows=32, max_tokens=64, max_delay=0.0)
    for _ in range(10):
        s2.add(make_item([16], deadline=10.0), 0.0)
    assert len(s2.next(0.0).batch) == 4  # the token budget binds first


def test_lengths_are_grouped_so_padding_stays_small() -> None:
    s = scheduler(max_delay=0.0)
    for i in range(8):
        s.add(make_item([200], deadline=1.0 + i), 0.0)
        s.add(make_item([12], deadline=1.0 + i + 0.5), 0.0)
    batches = []
    while s.queued_rows:
        decision = s.next(0.0)
        batches.append(sorted({r.length for r in decision.batch}))
    assert all(len(lengths) == 1 for lengths in batches), batches


def test_short_rows_share_a_batch_when_that_is_cheaper_than_apart() -> None:
    s = scheduler(max_delay=0.0)
    s.add(make_item([4], deadline=1.0), 0.0)
    s.add(make_item([9], deadline=1.0), 0.0)  # pads to 16: ratio 32/24 > 1.1, but one call beats two
    assert len(s.next(0.0).batch) == 2


def test_unmeetable_request_is_shed_before_compute() -> None:
    s = scheduler(max_delay=0.0)
    hopeless = make_item([128], deadline=true_cost(1, 128) * 0.5)
    fine = make_item([128], deadline=1.0)
    s.add(hopeless, 0.0)
    s.add(fine, 0.0)
    decision = s.next(0.0)
    assert decision.shed == [hopeless]
    assert [r.item for r in decision.batch] == [fine]
    assert s.queued_rows == 0


def test_rows_that_would_make_an_urgent_row_late_are_left_out() -> None:
    s = scheduler(max_delay=0.0, max_padding_ratio=100.0)
    urgent = make_item([8], deadline=true_cost(1, 8) + 0.0006)
    s.add(urgent, 0.0)
    s.add(make_item([256] * 1, deadline=5.0), 0.0)  # joining would pad urgent's batch to 256
    decision = s.next(0.0)
    assert [r.item for r in decision.batch] == [urgent]


def test_waits_for_company_only_under_load_and_within_max_delay() -> None:
    s = scheduler(max_delay=0.002, rate_window=0.1)
    s.add(make_item([16], deadline=1.0, enqueued_at=0.0), 0.0)
    assert s.next(0.0).batch, "a lone request at low load is sent at once"
    busy = scheduler(max_delay=0.002, rate_window=0.1)
    for i in range(200):  # ~2000 rows/s recently
        busy.add(make_item([16], deadline=100.0, enqueued_at=i * 0.0005), i * 0.0005)
        if i < 199:
            busy.next(i * 0.0005 + 0.00001)  # drains into batches as they fill
    now = 0.1
    busy.add(make_item([16], deadline=1.0, enqueued_at=now), now)
    decision = busy.next(now)
    if not decision.batch:
        assert decision.wait_until is not None and now < decision.wait_until <= now + 0.002 + 1e-9
        assert busy.next(decision.wait_until).batch, "sent once the wait is over"


def test_wait_never_endangers_the_earliest_deadline() -> None:
    s = scheduler(max_delay=1.0, rate_window=10.0, max_rows=64)
    for _ in range(3):
        s.add(make_item([64], deadline=100.0), 0.0)
    s.next(0.0)
    tight = make_item([64], deadline=true_cost(64, 64) + 0.001)
    s.add(tight, 0.0)
    decision = s.next(0.0)
    assert decision.batch or (decision.wait_until is not None
                              and decision.wait_until + true_cost(64, 64) <= tight.deadline)


def test_cancelled_items_are_dropped_and_not_counted() -> None:
    s = scheduler(max_delay=0.0)
    gone = make_item([8, 8, 8], deadline=1.0)
    kept = make_item([8], deadline=2.0)
    s.add(gone, 0.0)
    s.add(kept, 0.0)
    assert s.queued_rows == 4
    gone.future.cancel()
    s.forget(gone)
    assert s.queued_rows == 1
    decision = s.next(0.0)
    assert [r.item for r in decision.batch] == [kept]
    assert s.queued_rows == 0


def test_flush_sends_without_waiting() -> None:
    s = scheduler(max_delay=10.0, rate_window=10.0)
    for _ in range(50):
        s.add(make_item([8], deadline=100.0), 0.0)
    s.next(0.0)
    s.add(make_item([8], deadline=100.0), 0.0)
    assert s.next(0.0, flush=True).batch


def test_fifo_policy_keeps_arrival_order_and_waits_the_fixed_delay() -> None:
    s = scheduler(policy="fifo", max_delay=0.005)  # type: ignore[arg-type]
    late = make_item([8], deadline=1.0, enqueued_at=0.0)
    urgent = make_item([200], deadline=0.0001, enqueued_at=0.0)
    s.add(late, 0.0)
    s.add(urgent, 0.0)
    waiting = s.next(0.001)
    assert not waiting.batch and not waiting.shed and waiting.wait_until == 0.005
    sent = s.next(0.005)
    assert [r.item for r in sent.batch] == [late, urgent]  # no reordering, no shedding, no grouping


def test_under_a_backlog_nearly_late_rows_are_shed_so_batches_stay_efficient() -> None:
    s = scheduler(max_delay=0.0, max_rows=32)
    efficient = s.cost.efficient_rows(16, s.limits.overload_efficiency)
    assert 2 <= efficient <= 32
    # Two rows with just enough time to run alone (not in an efficient batch), then a deep backlog.
    nearly_late = [make_item([16], deadline=true_cost(1, 16) + 0.0007) for _ in range(2)]
    for item in nearly_late:
        s.add(item, 0.0)
    for _ in range(40):
        s.add(make_item([16], deadline=1.0), 0.0)
    decision = s.next(0.0)
    assert decision.shed == nearly_late
    assert len(decision.batch) >= efficient


def test_without_a_backlog_the_same_row_is_served_alone() -> None:
    s = scheduler(max_delay=0.0)
    nearly_late = make_item([16], deadline=true_cost(1, 16) + 0.0007)
    s.add(nearly_late, 0.0)
    s.add(make_item([200], deadline=1.0), 0.0)  # not a length it could share a batch with
    decision = s.next(0.0)
    assert not decision.shed and [r.item for r in decision.batch] == [nearly_late]


def test_short_rows_join_a_longer_batch_only_when_they_have_no_peers_to_ride_with() -> None:
    alone = scheduler(max_delay=0.0)
    alone.add(make_item([24], deadline=1.0), 0.0)
    alone.add(make_item([8], deadline=2.0), 0.0)  # one short row: cheaper padded along than on its own
    assert len(alone.next(0.0).batch) == 2
    backlog = scheduler(max_delay=0.0)
    backlog.add(make_item([24], deadline=1.0), 0.0)
    for i in range(40):  # many short rows: they fill an efficient batch of their own instead
        backlog.add(make_item([8], deadline=2.0 + i), 0.0)
    first = backlog.next(0.0)
    assert [r.length for r in first.batch] == [24]
    assert {r.length for r in backlog.next(0.0).batch} == {8}


def test_batches_stop_growing_where_throughput_stops_improving() -> None:
    s = scheduler(max_delay=1.0, rate_window=10.0, growth_efficiency=0.5)
    worthwhile = s.cost.efficient_rows(16, 0.5)  # 1 ms overhead vs 0.32 ms per row: 4 rows
    assert worthwhile == 4
    for _ in range(40):
        s.add(make_item([16], deadline=10.0), 0.0)
    decision = s.next(0.0)
    assert len(decision.batch) == worthwhile, "capped, and sent at once as a full batch"
    unlimited = scheduler(max_delay=0.0, growth_efficiency=1.0)
    for _ in range(40):
        unlimited.add(make_item([16], deadline=10.0), 0.0)
    assert len(unlimited.next(0.0).batch) == 32


def test_batches_fill_up_where_rows_cost_nothing() -> None:
    # A GPU whose batch time is all launch overhead: a full batch is sent at once, not one row at a time.
    s = Scheduler(BatchLimits(max_delay=1.0, rate_window=10.0), CostModel((0.002, 0.0, 0.0, 0.0)),
                  lambda n: round_up(n, 8))
    assert s.capacity(16) == 32
    for _ in range(40):
        s.add(make_item([16], deadline=10.0), 0.0)
    assert len(s.next(0.0).batch) == 32
