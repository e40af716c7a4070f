"""The one place errors become statuses: `STATUS` is the single table from a millibatch error's status
name to its gRPC code (and the HTTP status a REST door answers with); `failure` turns any exception a
call ended with into the status its caller gets, and logs it (service/edge.py applies it to every RPC).
"""

from __future__ import annotations

import logging

import grpc

from millibatch.errors import MillibatchError, StatusName

log = logging.getLogger("millibatch.requests")

#: Error status name → (gRPC status code, HTTP status).
STATUS: dict[StatusName, tuple[grpc.StatusCode, int]] = {
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "NOT_FOUND": (grpc.StatusCode.NOT_FOUND, 404),
    "RESOURCE_EXHAUSTED": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    "DEADLINE_EXCEEDED": (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    "UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, 503),
    "INTERNAL": (grpc.StatusCode.INTERNAL, 500),
    "FAILED_PRECONDITION": (grpc.StatusCode.FAILED_PRECONDITION, 400),
    "CANCELLED": (grpc.StatusCode.CANCELLED, 499),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "UNIMPLEMENTED": (grpc.StatusCode.UNIMPLEMENTED, 501),
}
#: Load-shedding answers: under overload they come by the thousand per second, so they are logged at
#: DEBUG only (metrics count every one); every other failure gets an INFO line.
OVERLOAD_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED})

def status_of(error: MillibatchError) -> grpc.StatusCode:
    """The gRPC status code for a millibatch error."""
    return STATUS[error.status][0]


def http_status_of(error: MillibatchError) -> int:
    """The HTTP status for a millibatch error (the HTTP door's answer)."""
    return STATUS[error.status][1]


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's `x-request-id` metadata, if any, for correlating logs."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)[:128]
    return "-"


def fail(context: grpc.aio.ServicerContext, status: grpc.StatusCode, details: str) -> None:
    """End the call with `status`: set the code and return, as `context.abort` would end it, minus the
    exception it raises through grpc's machinery (a visible share of the event loop's time when shedding
    at twice capacity). grpc.aio then sends an empty response message before the status (three HTTP/2
    frames where abort sends one), and still costs the server less than abort (docs/CALL_COST.md)."""
    context.set_code(status)
    context.set_details(details)


def refuse(context: grpc.aio.ServicerContext, error: MillibatchError) -> None:
    """End the call with `error`'s status from inside a handler, which then returns None (the edge reads
    the status from `context`). For the refusals of an overloaded server: answered where they are found
    instead of raised up through every coroutine frame to the edge, which is a visible share of what a
    refusal costs (docs/CALL_COST.md); for the same reason it sets the status itself."""
    context.set_code(STATUS[error.status][0])
    context.set_details(str(error))


def failure(rpc: str, error: BaseException, context: grpc.aio.ServicerContext) -> tuple[str, grpc.StatusCode, str]:
    """Log a failed request and say how it ends: (status name, code, details for the caller)."""
    if isinstance(error, MillibatchError):
        status = status_of(error)
        level = logging.DEBUG if status in OVERLOAD_CODES else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "request failed", extra={"rpc": rpc, "status": status.name, "detail": str(error),
                                                    "request_id": request_id(context)})
        return status.name, status, str(error)
    log.error("request failed", exc_info=error, extra={"rpc": rpc, "status": "INTERNAL",
                                                       "request_id": request_id(context)})
    return "INTERNAL", grpc.StatusCode.INTERNAL, "internal error"


