"""The one error hierarchy. Each error names its status; service/status.py maps it to gRPC once.

Messages are written for the caller: they say what was wrong and what the limit is, never internals.
"""

from __future__ import annotations

from typing import ClassVar, Literal

StatusName = Literal[
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "FAILED_PRECONDITION",
    "CANCELLED",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
]


class MillibatchError(Exception):
    """Base of every error a caller can see; `status` names its gRPC status code."""

    status: ClassVar[StatusName] = "INTERNAL"
    #: Short machine-readable reason, used as a metric label.
    reason: ClassVar[str] = "internal"


class InvalidInput(MillibatchError):
    """The request is malformed or breaks a configured limit."""

    status = "INVALID_ARGUMENT"
    reason = "invalid_input"


class InputTooLong(InvalidInput):
    """An input has more tokens than the model accepts and truncation was not asked for."""

    reason = "too_long"


class ModelNotFound(MillibatchError):
    """No served model has the requested name."""

    status = "NOT_FOUND"
    reason = "model_not_found"


class WrongTask(MillibatchError):
    """The model exists but does another task (e.g. Classify on an embedding model)."""

    status = "FAILED_PRECONDITION"
    reason = "wrong_task"


class QueueFull(MillibatchError):
    """Admission refused: the model's queue or in-flight budget is full. Retry elsewhere or later."""

    status = "RESOURCE_EXHAUSTED"
    reason = "queue_full"
    #: Seconds after which the same call would likely be admitted (None: no estimate); the HTTP door sends
    #: it as Retry-After. gRPC callers read it in the message: as gRPC's retry pushback it cost each
    #: refusal 7-12 µs more (docs/OVERLOAD.md).
    retry_after: float | None = None


class Overloaded(QueueFull):
    """Admission refused: the work already queued would outlast this request's deadline. Retry elsewhere
    or later; nothing was spent on the request."""

    reason = "overloaded"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryRefused(QueueFull):
    """The HTTP door refused an SDK's automatic retry while the server sheds load: it follows a timeout or a
    refusal and the SDK's backoff, and the engine time goes to first attempts that can still be in time."""

    reason = "retry_refused"


class DeadlineUnmeetable(MillibatchError):
    """The request cannot finish before its deadline, so no compute is spent on it."""

    status = "DEADLINE_EXCEEDED"
    reason = "deadline"


#: Admission's answer to a request it refuses at the door (returned, not raised: `Admission.refusal`).
Refusal = Overloaded | DeadlineUnmeetable


class NotServing(MillibatchError):
    """The model or server is not accepting work (warming up, draining, or unhealthy)."""

    status = "UNAVAILABLE"
    reason = "not_serving"


class EngineFailure(MillibatchError):
    """The engine failed on the batch this request rode in; details are logged, not returned."""

    status = "INTERNAL"
    reason = "engine_error"


class Unauthenticated(MillibatchError):
    """Missing or wrong API key."""

    status = "UNAUTHENTICATED"
    reason = "unauthenticated"


class Unsupported(MillibatchError):
    """The server does not offer this operation (e.g. loading a model at run time: models are fixed at start-up)."""

    status = "UNIMPLEMENTED"
    reason = "unsupported"
