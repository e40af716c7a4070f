"""The one place errors become statuses, and every call through a gRPC door is accounted for.

`STATUS` is the single table from a millibatch error's status name to its gRPC code (and the HTTP
status a REST door answers with). `grpc_errors` wraps every unary handler of every servicer, and
`grpc_stream_errors` every streaming one: they turn MillibatchError into its status, anything
unexpected into INTERNAL without internals, log one line per failed request, and tell the data plane
that the call started and how it ended (call ledger, request metrics).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from millibatch.errors import MillibatchError, StatusName

if TYPE_CHECKING:
    from millibatch.service.dataplane import DataPlane

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
}
#: Load-shedding answers: under overload they come by the thousand per second, so they are logged at
#: DEBUG only (metrics count every one); every other failure gets an INFO line.
OVERLOAD_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED})

Handler = TypeVar("Handler", bound=Callable[..., Any])


class Door(Protocol):
    """A servicer: it converts protobuf to data-plane calls and back."""

    plane: DataPlane


def status_of(error: MillibatchError) -> grpc.StatusCode:
    """The gRPC status code for a millibatch error."""
    return STATUS[error.status][0]


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's `x-request-id` metadata, if any, for correlating logs."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)[:128]
    return "-"


def fail(context: grpc.aio.ServicerContext, status: grpc.StatusCode, details: str) -> None:
    """End the call with `status`. Setting the code and returning is what `context.abort` does, minus
    the exception it raises through grpc's machinery (a visible share of the event loop's time when
    shedding at twice capacity); grpc sends no response message with a non-OK code."""
    context.set_code(status)
    context.set_details(details)


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


def grpc_errors(rpc: str, model_field: str = "model") -> Callable[[Handler], Handler]:
    """Wrap a unary handler of a `Door`: errors become statuses, and the plane accounts for the call
    under the model named by the request's `model_field`."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: Door, request: Any, context: grpc.aio.ServicerContext) -> Any:
            plane = self.plane
            started = time.perf_counter()
            code = "OK"
            plane.call_started()
            try:
                return await method(self, request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                # The handler aborted by itself and has already chosen (and logged) its status.
                code = context.code().name if context.code() is not None else "UNKNOWN"
                raise
            except Exception as error:
                code, status, details = failure(rpc, error, context)
                fail(context, status, details)
                return None
            finally:
                plane.call_ended(rpc, getattr(request, model_field, ""), code, time.perf_counter() - started)

        return wrapper  # type: ignore[return-value]

    return decorate


def grpc_stream_errors(rpc: str) -> Callable[[Handler], Handler]:
    """Wrap a streaming handler (an async generator) of a `Door`: the stream is one call in the ledger;
    its messages are counted by the handler itself (`DataPlane.count`), each with its own outcome."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: Door, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            plane = self.plane
            plane.call_started()
            cancelled = False
            try:
                async for response in method(self, requests, context):
                    yield response
            except asyncio.CancelledError:
                cancelled = True
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                _code, status, details = failure(rpc, error, context)
                fail(context, status, details)
            finally:
                plane.stream_ended(cancelled)

        return wrapper  # type: ignore[return-value]

    return decorate


__all__ = ["STATUS", "Door", "fail", "grpc_errors", "grpc_stream_errors", "request_id", "status_of"]
