"""ClientPatience on a fake clock: what the HTTP door learns of callers that state no deadline."""

from __future__ import annotations

import pytest

from millibatch.service.http.patience import GROWTH, MAX_GROUPS, MIN_HANG_UPS, ClientPatience, patience_group

DEFAULT = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def patience(clock: Clock) -> ClientPatience:
    return ClientPatience(window=2.0, quiet=1.0, clock=clock)


def hang_ups(patience: ClientPatience, clock: Clock, waits: list[float], group: str = "", every: float = 0.01) -> None:
    for wait in waits:
        clock.now += every
        patience.hung_up(group, wait)


def test_groups_by_the_sdks_whole_seconds() -> None:
    assert patience_group({"X-Stainless-Timeout": "0"}) == "0"
    assert patience_group({"X-Stainless-Timeout": "600"}) == "600"
    assert patience_group({}) == ""
    for odd in ("", "-1", "0.5", "soon", "1" * 20):
        assert patience_group({"X-Stainless-Timeout": odd}) == "", odd


def test_a_group_needs_several_hang_ups_then_gets_their_median(patience: ClientPatience, clock: Clock) -> None:
    hang_ups(patience, clock, [0.1] * (MIN_HANG_UPS - 1))
    assert patience.timeout("", DEFAULT) == DEFAULT  # too few to say anything
    # A client that stalls aborts a run of calls at once, each having waited here far less than its
    # timeout: one hang-up, not eight.
    clock.now += 0.01
    hang_ups(patience, clock, [0.02] * 8, every=0.0)
    assert patience.timeout("", DEFAULT) == pytest.approx(0.1)
    assert patience.timeout("0", DEFAULT) == DEFAULT  # another group learns on its own
    assert patience.learned() == {"": pytest.approx(0.1)}
    assert patience.timeout("", 0.05) == 0.05  # never longer than the default
    # A hang-up the server saw late (its loop was busy) does not lengthen the deadline.
    hang_ups(patience, clock, [0.1, 0.1, 0.3])
    assert patience.timeout("", DEFAULT) == pytest.approx(0.1)


def test_waits_leave_the_window(patience: ClientPatience, clock: Clock) -> None:
    hang_ups(patience, clock, [0.2] * MIN_HANG_UPS)
    hang_ups(patience, clock, [0.1] * 10, every=0.5)  # 5 s of shorter waits, never a quiet second
    assert patience.timeout("", DEFAULT) == pytest.approx(0.1)


def test_a_quiet_group_probes_longer_until_the_next_hang_up(patience: ClientPatience, clock: Clock) -> None:
    """A deadline learned too short would never be corrected (the server refuses everyone first), so it
    grows after each quiet interval; the next hang-up ends the probe."""
    hang_ups(patience, clock, [0.02] * MIN_HANG_UPS)
    clock.now += 1.5
    assert patience.timeout("", DEFAULT) == pytest.approx(0.02 * GROWTH)
    clock.now += 0.5
    assert patience.timeout("", DEFAULT) == pytest.approx(0.02 * GROWTH)  # not quiet for a whole interval again
    clock.now += 1.1
    assert patience.timeout("", DEFAULT) == pytest.approx(0.02 * GROWTH**2)
    patience.hung_up("", 0.04)  # past the callers' patience: back to the longest wait of the window
    assert patience.timeout("", DEFAULT) == pytest.approx(0.04)


def test_a_group_that_grows_to_the_default_is_forgotten(patience: ClientPatience, clock: Clock) -> None:
    hang_ups(patience, clock, [0.5] * MIN_HANG_UPS)
    assert patience.timeout("", DEFAULT) == pytest.approx(0.5)
    clock.now += 1.5
    assert patience.timeout("", DEFAULT) == pytest.approx(0.75)
    clock.now += 1.5
    assert patience.timeout("", DEFAULT) == DEFAULT  # 1.125: gone
    assert patience.learned() == {}
    hang_ups(patience, clock, [0.3] * (MIN_HANG_UPS - 1))
    assert patience.timeout("", DEFAULT) == DEFAULT  # learning starts over


def test_groups_are_bounded(patience: ClientPatience, clock: Clock) -> None:
    for group in range(MAX_GROUPS + 10):
        hang_ups(patience, clock, [0.1] * MIN_HANG_UPS, group=str(group))
    assert len(patience.learned()) == MAX_GROUPS
    assert patience.timeout(str(MAX_GROUPS + 5), DEFAULT) == DEFAULT


def test_groups_that_never_learned_make_room(patience: ClientPatience, clock: Clock) -> None:
    for group in range(MAX_GROUPS):  # one hang-up each: a caller's own reasons, no pattern
        hang_ups(patience, clock, [0.1], group=f"{group}")
    hang_ups(patience, clock, [0.1] * MIN_HANG_UPS, group="new")
    assert patience.learned() == {}  # no room while they are recent
    clock.now += 3.0
    hang_ups(patience, clock, [0.1] * MIN_HANG_UPS, group="new")
    assert patience.learned() == {"new": pytest.approx(0.1)}
