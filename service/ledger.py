"""Every call that reaches a handler is accounted for: accepted, then answered or cancelled.

At the end of a drain the server logs the ledger; `accepted == answered + cancelled` with
`cancelled == 0` means no accepted request was lost. (Calls that gRPC received but never handed to a
handler before shutdown are not in it: see service/server.py `stop`.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CallLedger:
    """Counts of calls by stage; plain integers, touched once at the start and once at the end of a call."""

    #: Calls whose handler started.
    accepted: int = 0
    #: Calls that got a status from their handler (OK or an error).
    answered: int = 0
    #: Calls whose handler was cancelled (the client went away, or the server cancelled it).
    cancelled: int = 0

    @property
    def open(self) -> int:
        """Calls accepted and not yet finished."""
        return self.accepted - self.answered - self.cancelled
