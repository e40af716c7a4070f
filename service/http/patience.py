"""How long HTTP callers that state no deadline wait, learned from the ones that hang up.

A request with X-Request-Timeout, or the official OpenAI Python SDK's X-Stainless-Read-Timeout, says how
long its caller waits. Many callers have a timeout but send neither: the official OpenAI Node SDK sends
nothing for a client-wide timeout and whole seconds, truncated, for a per-request one
(X-Stainless-Timeout: "0" for any timeout under a second); curl --max-time and most HTTP libraries send
nothing. Those calls get default_deadline_ms. Under overload the queue then fills with calls whose
clients give up long before it: the server computes answers nobody reads, and the Node SDK sends each
abandoned call again (docs/OVERLOAD.md, "Callers that state no deadline").

Such a caller's patience shows when it hangs up: aiohttp cancels the handler when the connection closes,
and the edge reports how long the call had waited. Callers are grouped by the SDK's whole-second header
(its value, or none). A group's deadline, where shorter than the default, is the median wait of its last
SAMPLES hang-ups within `window` seconds, once there are MIN_HANG_UPS:

- hang-ups within CLUSTER of each other count as one, the longest: a client that stalls (while it opens
  connections, or when it is short of CPU) aborts a whole run of calls at once, each of which had waited
  here far less than its timeout, since it reached the server late;
- the median, not the longest: when the server's own loop is busy it sees a hang-up late, and the
  longest of many would climb with every late one, admitting calls that wait longer still.

A deadline learned too short would stay once the server refuses or sheds every call before its caller
gives up, since then nobody hangs up. So after every `quiet` interval without a hang-up the group's
deadline grows by GROWTH (a probe), and the group is dropped when it reaches the default. The next
hang-up ends the probe. While the deadline is right, admitted calls that still run late are hung up on
first (half of their callers started the clock earlier, against the server's, than the median), which
holds it; a probe past the callers' patience lasts until the first of the calls it admitted is hung up on.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("millibatch.http")

#: The official OpenAI Node SDK's per-request timeout, whole seconds rounded down.
SDK_WHOLE_SECONDS_HEADER = "X-Stainless-Timeout"
#: Hang-ups a group needs within the window before it has a deadline of its own.
MIN_HANG_UPS = 4
#: The median is over at most this many of a group's latest hang-ups.
SAMPLES = 32
#: Hang-ups closer together than this (seconds) are one client stalling, and count once.
CLUSTER = 0.002
#: A group's deadline grows by this factor after each quiet interval without a hang-up.
GROWTH = 1.5
#: Groups kept at most: the header is the caller's to choose, memory is ours.
MAX_GROUPS = 64
#: A group's header value is kept only if it is a short string of digits (else the group of no header).
MAX_GROUP_DIGITS = 7


@dataclass
class Group:
    """One group's recent hang-ups: (time, seconds waited), oldest first."""

    hang_ups: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    last_at: float = 0.0
    #: The learned deadline (seconds); None until MIN_HANG_UPS.
    patience: float | None = None
    #: A probe's deadline after a quiet interval, until the next hang-up.
    probe: float | None = None


def patience_group(headers: Mapping[str, str]) -> str:
    """The group of a request that states no deadline: the SDK's whole-second timeout, or "" without one."""
    value = headers.get(SDK_WHOLE_SECONDS_HEADER, "")
    return value if value.isdigit() and len(value) <= MAX_GROUP_DIGITS else ""


class ClientPatience:
    """The learned deadlines of one HTTP door, by group."""

    def __init__(self, window: float = 2.0, quiet: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.quiet = quiet
        self._clock = clock
        self._groups: dict[str, Group] = {}

    def timeout(self, group: str, default: float) -> float:
        """The seconds a call of `group` gets: the group's learned patience where shorter than `default`."""
        found = self._groups.get(group)
        if found is None or found.patience is None:
            return default
        now = self._clock()
        if now - found.last_at > self.quiet:
            found.probe = max(found.patience, found.probe or 0.0) * GROWTH
            found.last_at = now
            if found.probe >= default:
                del self._groups[group]
                log.info("forgot the patience of HTTP callers without a deadline", extra={"group": group or "-"})
                return default
        return min(default, found.probe or found.patience)

    def hung_up(self, group: str, waited: float) -> None:
        """A call of `group` lost its client after `waited` seconds, before it was answered."""
        now = self._clock()
        found = self._groups.get(group)
        if found is None:
            if len(self._groups) >= MAX_GROUPS:  # make room: groups that have not learned and went quiet
                self._groups = {name: kept for name, kept in self._groups.items()
                                if kept.patience is not None or now - kept.last_at <= self.window}
                if len(self._groups) >= MAX_GROUPS:
                    return
            found = self._groups[group] = Group()
        hang_ups = found.hang_ups
        while hang_ups and hang_ups[0][0] < now - self.window:
            hang_ups.popleft()
        if hang_ups and now - hang_ups[-1][0] < CLUSTER:
            at, longest = hang_ups[-1]
            hang_ups[-1] = (at, max(longest, waited))
        else:
            hang_ups.append((now, waited))
        found.last_at = now
        found.probe = None
        if found.patience is not None or len(hang_ups) >= MIN_HANG_UPS:
            learned = found.patience is None
            found.patience = statistics.median(wait for _, wait in hang_ups)
            if learned:
                log.info("learned the patience of HTTP callers without a deadline",
                         extra={"group": group or "-", "seconds": round(found.patience, 4)})

    def learned(self) -> dict[str, float]:
        """Each group's learned patience (seconds), for tests and inspection."""
        return {name: group.patience for name, group in self._groups.items() if group.patience is not None}
