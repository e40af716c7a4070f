"""Client-side adaptive throttling: a client whose calls the server mostly refuses refuses some itself.

Under overload a server still pays for every call it refuses: HTTP/2, decoding, admission and a status
(about 0.2 ms of one core each for millibatch, docs/OVERLOAD.md). At five times its peak, refusals take a
third of the server's core from the engine. The remedy that needs no coordination is the one in Google's
SRE book ("Handling Overload", client-side throttling): each client keeps, over a recent window, how many
calls it attempted (`requests`) and how many the server accepted (`accepts`), and refuses a new call
locally with probability

    max(0, (requests - multiplier * accepts) / (requests + 1))

So while the server accepts nearly everything nothing is throttled, and under overload the server sees
about `multiplier` times what it accepts: enough to notice at once when it has room again. A call refused
locally counts as a request, never an accept, and fails with RESOURCE_EXHAUSTED as a server refusal
would, so callers handle one code. A call sent counts once it ends, so that calls in flight never read
as refused.

millibatch's Client and AsyncClient do this by default, asking the throttle in each call
(`LockedThrottle.call`, `throttled_call`). For a channel made elsewhere, the same as a gRPC interceptor:

    from millibatch.throttle import AioThrottlingInterceptor
    channel = grpc.aio.insecure_channel(target, interceptors=[AioThrottlingInterceptor()])

Only RESOURCE_EXHAUSTED counts as a refusal: a call the server shed at its deadline was accepted, and
other errors say nothing about its load.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

#: The SRE book's multiplier: the server is sent about twice what it accepts.
DEFAULT_MULTIPLIER = 2.0
#: Seconds over which the counts decay (time constant): long enough to average over bursts, short enough
#: to stop throttling within seconds of the overload's end.
DEFAULT_WINDOW_S = 10.0


class AdaptiveThrottle:
    """The counts and the decision; not thread-safe (one per event loop, or behind the caller's lock)."""

    def __init__(self, multiplier: float = DEFAULT_MULTIPLIER, window_s: float = DEFAULT_WINDOW_S, *,
                 clock: Callable[[], float] = time.monotonic, draw: Callable[[], float] = random.random) -> None:
        if multiplier < 1.0:
            raise ValueError(f"multiplier must be at least 1 (got {multiplier}): below it the throttle refuses "
                             "calls the server would accept")
        if window_s <= 0.0:
            raise ValueError(f"window_s must be positive (got {window_s})")
        self.multiplier = multiplier
        self.window_s = window_s
        self._clock, self._draw = clock, draw
        self._requests = 0.0
        self._accepts = 0.0
        self._at = clock()

    def _decay(self) -> None:
        now = self._clock()
        if now > self._at:
            factor = math.exp((self._at - now) / self.window_s)
            self._requests *= factor
            self._accepts *= factor
            self._at = now

    @property
    def rejection_probability(self) -> float:
        """The chance that the next call is refused locally."""
        self._decay()
        return max(0.0, (self._requests - self.multiplier * self._accepts) / (self._requests + 1.0))

    def admit(self) -> bool:
        """Whether to send the next call; False: refuse it here, and count it. A call sent is counted when
        its outcome is recorded, so that calls still in flight (a client starting with many at once) do not
        read as refused."""
        chance = self.rejection_probability
        if chance <= 0.0 or self._draw() >= chance:
            return True
        self._requests += 1.0
        return False

    def record(self, code: grpc.StatusCode | None) -> None:
        """The outcome of a call that was sent: None or any code but RESOURCE_EXHAUSTED is an accept."""
        self._decay()
        self._requests += 1.0
        if code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            self._accepts += 1.0


def _message(chance: float) -> str:
    return (f"throttled by the client: the server refused most recent calls, so {chance:.0%} of new calls are "
            "refused before they are sent")


class ThrottledError(grpc.aio.AioRpcError):  # type: ignore[misc]  # grpc.aio's classes are untyped
    """A call refused by the client's throttle (grpc.aio): RESOURCE_EXHAUSTED, never sent."""

    #: Lets a caller (or a load generator) tell it from a server's refusal without importing this module.
    throttled_by_client = True

    def __init__(self, chance: float) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                         _message(chance))


class ThrottledRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]  # grpc.Call's metadata methods: none
    """A call refused by the client's throttle (blocking stubs): RESOURCE_EXHAUSTED, never sent."""

    throttled_by_client = True

    def __init__(self, chance: float) -> None:
        self._details = _message(chance)
        super().__init__(self._details)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


async def throttled_call(throttle: AdaptiveThrottle, method: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
    """One grpc.aio unary call through `throttle`, made directly: how millibatch's AsyncClient calls. An
    interceptor would do the same, but gRPC's interceptor machinery costs a call more than the throttle
    does (bench/client_throttle.py)."""
    if not throttle.admit():
        raise ThrottledError(throttle.rejection_probability)
    try:
        response = await method(request, **kwargs)
    except grpc.aio.AioRpcError as error:
        throttle.record(error.code())
        raise
    throttle.record(None)
    return response


class LockedThrottle:
    """An AdaptiveThrottle behind a lock, for blocking stubs, which are called from many threads."""

    def __init__(self, throttle: AdaptiveThrottle | None = None) -> None:
        import threading

        self.throttle = throttle or AdaptiveThrottle()
        self._lock = threading.Lock()

    def admit(self) -> None:
        """Return if the next call may be sent; raise ThrottledRpcError (and count it) if not."""
        with self._lock:
            if not self.throttle.admit():
                raise ThrottledRpcError(self.throttle.rejection_probability)

    def record(self, code: grpc.StatusCode | None) -> None:
        with self._lock:
            self.throttle.record(code)

    def call(self, method: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        """One blocking unary call through the throttle, made directly: how millibatch's Client calls."""
        self.admit()
        try:
            response = method(request, **kwargs)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call):  # an error that cannot tell its code counts as nothing
                self.record(error.code())
            raise
        self.record(None)
        return response


class AioThrottlingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # untyped base
    """Throttles a grpc.aio channel's unary calls (Embed, ModelInfer, ...) with one AdaptiveThrottle."""

    def __init__(self, throttle: AdaptiveThrottle | None = None) -> None:
        self.throttle = throttle or AdaptiveThrottle()

    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                                    request: Any) -> Any:
        throttle = self.throttle
        if not throttle.admit():
            raise ThrottledError(throttle.rejection_probability)
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            throttle.record(error.code())
            raise
        throttle.record(None)
        return call


class ThrottlingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc's base is untyped
    """Throttles a blocking channel's unary calls: `grpc.intercept_channel(channel, ThrottlingInterceptor())`."""

    def __init__(self, throttle: AdaptiveThrottle | None = None) -> None:
        self._locked = LockedThrottle(throttle)
        self.throttle = self._locked.throttle

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        self._locked.admit()
        outcome = continuation(client_call_details, request)
        outcome.add_done_callback(self._record)
        return outcome

    def _record(self, outcome: Any) -> None:
        try:
            code = outcome.code()
        except Exception:  # an outcome that cannot tell its code: count nothing
            return
        self._locked.record(None if code is grpc.StatusCode.OK else code)
