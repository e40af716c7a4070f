"""Admission's refusals: what an Overloaded refusal tells the caller about when to come back."""

from __future__ import annotations

import pytest

from millibatch.batching.admission import MAX_RETRY_AFTER, Admission
from millibatch.batching.cost_model import CostModel
from millibatch.errors import DeadlineUnmeetable, Overloaded


def admission() -> Admission:
    return Admission(CostModel(), padded_length=lambda n: n, capacity=lambda n: 8, max_queue_rows=64, instances=1)


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
