"""Whether the server is refusing calls right now, for what changes its ways while it does.

Admission's refusal count is read every CHECK_SECONDS. From ENGAGE_REFUSALS_PER_SECOND on the watch
is engaged; after RELEASE_AFTER_SECONDS without a refusal it is released. Each change is told to its
listeners: gRPC's poller pacing (`service.poller_pacing`) and the refusal of calls before their request
is read (`service.edge`). A lone call, or a server at its peak, never engages it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

#: How often the refusal count is read.
CHECK_SECONDS = 0.25
#: Refusals per second from which the watch engages.
ENGAGE_REFUSALS_PER_SECOND = 50.0
#: Seconds without a refusal after which it is released.
RELEASE_AFTER_SECONDS = 1.0

#: Told True when the watch engages and False when it is released.
Listener = Callable[[bool], None]


class RefusalWatch:
    """Engaged while calls are being refused; `check` runs every CHECK_SECONDS."""

    def __init__(self, refusals: Callable[[], int], listeners: Sequence[Listener], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._refusals = refusals
        self._listeners = tuple(listeners)
        self._clock = clock
        self._last_count = refusals()
        self._last_check = clock()
        self._quiet_since: float | None = None
        #: Whether calls are being refused now.
        self.engaged = False

    def check(self) -> None:
        """Read the refusals since the last check and engage or release."""
        now, count = self._clock(), self._refusals()
        elapsed = max(now - self._last_check, 1e-9)
        new = count - self._last_count
        self._last_count, self._last_check = count, now
        if new / elapsed >= ENGAGE_REFUSALS_PER_SECOND:
            self._quiet_since = None
            if not self.engaged:
                self.engaged = True
                self._tell(True)
        elif self.engaged:
            if new:
                self._quiet_since = None
                return
            if self._quiet_since is None:
                self._quiet_since = now
            if now - self._quiet_since >= RELEASE_AFTER_SECONDS:
                self.release()

    def release(self) -> None:
        """Not refusing any more (or shutting down): every listener is told."""
        if self.engaged:
            self.engaged = False
            self._tell(False)
        self._quiet_since = None

    def _tell(self, engaged: bool) -> None:
        for listener in self._listeners:
            listener(engaged)

    async def run(self) -> None:
        """Check every CHECK_SECONDS until cancelled; released on the way out."""
        try:
            while True:
                await asyncio.sleep(CHECK_SECONDS)
                self.check()
        finally:
            self.release()
