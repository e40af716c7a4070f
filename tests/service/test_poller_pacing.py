"""`grpc_poller_policy: overload`: gRPC's poller batched and paced only while calls are refused (the
refusal watch's state on a fake clock, and its pacing listener)."""

from __future__ import annotations

import threading
import time

from millibatch.service.grpc_poller import PollerPolicy
from millibatch.service.poller_pacing import Pacer, PollerPacing
from millibatch.service.refusal_watch import (
    CHECK_SECONDS,
    ENGAGE_REFUSALS_PER_SECOND,
    RELEASE_AFTER_SECONDS,
    RefusalWatch,
)


class FakePacer(Pacer):
    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1


class World:
    """A fake clock, a refusal counter and a record of the poller's policies."""

    def __init__(self) -> None:
        self.now = 100.0
        self.refused = 0
        self.policies: list[PollerPolicy] = []
        self.pacer = FakePacer()
        self.told: list[bool] = []
        self.pacing = RefusalWatch(lambda: self.refused, [PollerPacing(self.schedule, self.pacer), self.told.append],
                                   clock=lambda: self.now)

    def schedule(self, policy: PollerPolicy) -> int:
        self.policies.append(policy)
        return 1

    def tick(self, refusals_per_second: float) -> None:
        self.now += CHECK_SECONDS
        self.refused += round(refusals_per_second * CHECK_SECONDS)
        self.pacing.check()


def test_engages_once_refusals_reach_the_rate_and_releases_after_a_quiet_second() -> None:
    world = World()
    world.tick(ENGAGE_REFUSALS_PER_SECOND / 2)
    assert not world.pacing.engaged and world.policies == []
    world.tick(2 * ENGAGE_REFUSALS_PER_SECOND)
    assert world.pacing.engaged and world.policies == ["batch"] and world.pacer.started == 1
    world.tick(1000)
    world.tick(4)  # a few refusals: still overloaded, the quiet time starts again
    assert world.pacing.engaged and world.policies == ["batch"]
    quiet_ticks = round(RELEASE_AFTER_SECONDS / CHECK_SECONDS)
    for _ in range(quiet_ticks):
        world.tick(0)
    assert world.pacing.engaged  # the first quiet check starts the clock; a full second must pass
    world.tick(0)
    assert not world.pacing.engaged and world.policies == ["batch", "normal"] and world.pacer.stopped == 1
    world.tick(0)
    assert world.policies == ["batch", "normal"]
    assert world.told == [True, False]  # every listener hears each change once


def test_release_on_the_way_out_restores_the_poller() -> None:
    world = World()
    world.tick(10 * ENGAGE_REFUSALS_PER_SECOND)
    world.pacing.release()
    assert world.policies == ["batch", "normal"] and world.pacer.stopped == 1
    world.pacing.release()
    assert world.policies == ["batch", "normal"]


def test_pacer_thread_wakes_until_stopped() -> None:
    pacer = Pacer(seconds=0.001)
    pacer.start()
    pacer.start()  # idempotent: one thread
    assert pacer.running
    assert sum(t.name == "poller-pacer" for t in threading.enumerate()) == 1
    pacer.stop()
    deadline = time.monotonic() + 2
    while any(t.name == "poller-pacer" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "poller-pacer" for t in threading.enumerate()) and not pacer.running


def test_overload_is_the_default_policy() -> None:
    from millibatch.settings import Settings

    assert Settings().grpc_poller_policy == "overload"
