"""Admission's refusals: what an Overloaded refusal tells the caller about when to come back, and how a call's
length weighs."""

from __future__ import annotations

import numpy as np
import pytest

from millibatch.batching.admission import MAX_RETRY_AFTER, Admission, AdmissionLength
from millibatch.batching.cost_model import CostModel
from millibatch.batching.work import Row
from millibatch.errors import DeadlineUnmeetable, Overloaded


def admission(length: AdmissionLength = "own", max_queue_rows: int = 64) -> Admission:
    return Admission(CostModel(), padded_length=lambda n: n, capacity=lambda n: 8, max_queue_rows=max_queue_rows,
                     instances=1, length=length)


def test_overloaded_says_how_long_until_a_call_like_this_would_fit() -> None:
    gate = admission()
    # 250 ms of work queued ahead, a deadline 100 ms away, 1 ms for the answer's trip back: the queue
    # must drain by 151 ms before the same call would fit.
    with pytest.raises(Overloaded) as refused:
        gate.check(now=10.0, deadline=10.1, wait=0.25, margin=0.001)
    assert refused.value.retry_after == pytest.approx(0.151)
    assert "250 ms of queued work" in str(refused.value)


def test_the_hint_is_capped_and_only_overload_gives_one() -> None:
    gate = admission()
    with pytest.raises(Overloaded) as refused:
        gate.check(now=0.0, deadline=0.1, wait=1e9, margin=0.0)
    assert refused.value.retry_after == MAX_RETRY_AFTER
    with pytest.raises(DeadlineUnmeetable) as unmeetable:  # no queue would help: nothing to wait for
        gate.check(now=0.0, deadline=0.001, wait=0.0, margin=0.002)
    assert getattr(unmeetable.value, "retry_after", None) is None
    gate.check(now=0.0, deadline=0.1, wait=0.05, margin=0.001)  # fits: no refusal


def test_refusal_returns_what_check_raises() -> None:
    gate = admission()
    assert gate.refusal(now=0.0, deadline=0.1, wait=0.05, margin=0.001) is None
    refused = gate.refusal(now=10.0, deadline=10.1, wait=0.25, margin=0.001)
    assert isinstance(refused, Overloaded) and refused.retry_after == pytest.approx(0.151)
    assert isinstance(gate.refusal(now=0.0, deadline=0.001, wait=0.0, margin=0.002), DeadlineUnmeetable)


def rows_of(length: int) -> list[Row]:
    ids = np.ones(length, dtype=np.int64)
    return [Row(ids, np.zeros_like(ids))]


def boundary_wait(gate: Admission, length: int, deadline: float, margin: float) -> float:
    """The queue wait at which a lone row of `length` tokens, priced at its own length, just fits."""
    return deadline - margin - gate.least_seconds(1, length)


def test_own_length_refuses_a_long_input_where_a_short_one_still_fits() -> None:
    gate = admission()
    wait = (boundary_wait(gate, 16, 0.1, 0.001) + boundary_wait(gate, 256, 0.1, 0.001)) / 2
    gate.admit(rows_of(16), deadline=0.1, now=0.0, wait=wait, margin=0.001)
    with pytest.raises(Overloaded):
        gate.admit(rows_of(256), deadline=0.1, now=0.0, wait=wait, margin=0.001)


def test_typical_length_refuses_every_length_alike_but_never_an_input_that_cannot_fit() -> None:
    gate = admission("typical", max_queue_rows=1000)
    for _ in range(400):  # admitted requests teach it the typical length: 64 tokens
        gate.admit(rows_of(64), deadline=10.0, now=0.0, wait=0.0, margin=0.001)
    assert gate.typical_tokens == pytest.approx(64, abs=0.5)
    # Where the typical input just fits, the short and the long one are both admitted; a little more queue
    # and both are refused.
    fits = boundary_wait(gate, 64, 0.1, 0.001) - 1e-4
    for length in (16, 256):
        gate.admit(rows_of(length), deadline=0.1, now=0.0, wait=fits, margin=0.001)
        assert isinstance(gate.refusal(now=0.0, deadline=0.1, wait=fits + 2e-4, margin=0.001,
                                       compute=gate.least_seconds(1, length)), Overloaded)
    # A request whose own compute outlasts its deadline is refused whatever the queue.
    own = gate.least_seconds(1, 256)
    assert isinstance(gate.refusal(now=0.0, deadline=own, wait=0.0, margin=0.001, compute=own), DeadlineUnmeetable)


@pytest.mark.parametrize("length", ["own", "typical"])
def test_a_slack_shrunk_by_misses_still_admits_what_fits_alone_so_the_server_recovers(length: AdmissionLength) -> None:
    """Each miss shrinks the slack; with only long requests, each needing most of its deadline, a slack
    that scaled their own work refused them all even with no queue, so none was answered and the slack
    never regrew (found with 255-token texts on a slow CPU: every call refused until restart)."""
    gate = admission(length, max_queue_rows=1000)
    long_input = rows_of(2048)
    own = gate.least_seconds(1, 2048)
    deadline = own / 0.7  # its own work takes 70% of the deadline
    for _ in range(200):
        gate.outcome(missed=True)
    assert gate.slack == pytest.approx(0.2)
    gate.admit(long_input, deadline=deadline, now=0.0, wait=0.0, margin=0.001)
    for _ in range(50):
        gate.admit(long_input, deadline=deadline, now=0.0, wait=0.0, margin=0.001)
        gate.outcome(missed=False)
    assert gate.slack > 0.2
    # With a queue ahead that the slack no longer allows, it is refused, and told when to come back.
    room = deadline - own - 0.001
    refused = gate.refusal(now=0.0, deadline=deadline, wait=0.9 * room, margin=0.001, compute=own)
    assert isinstance(refused, Overloaded) and refused.retry_after is not None and refused.retry_after > 0
