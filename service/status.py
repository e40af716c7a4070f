"""The one place errors become gRPC statuses."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from millibatch.errors import MillibatchError
from millibatch.service.ledger import CallLedger

log = logging.getLogger("millibatch.requests")

STATUS_CODES: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}
#: Load-shedding answers: under overload they come by the thousand per second, so they are logged at
#: DEBUG only (metrics count every one); every other failure gets an INFO line.
OVERLOAD_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED})

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


class RequestRecorder(Protocol):
    """Told about every finished RPC (metrics); must not block."""

    def __call__(self, rpc: str, request: Any, code: str, seconds: float) -> None: ...


def status_of(error: MillibatchError) -> grpc.StatusCode:
    """The gRPC status code for a millibatch error."""
    return STATUS_CODES[error.status]


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


def grpc_errors(rpc: str) -> Callable[[Handler], Handler]:
    """Turn MillibatchError into its status and anything unexpected into INTERNAL without internals;
    log one line per failed request (DEBUG for load shedding, see OVERLOAD_CODES)."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            ledger: CallLedger | None = getattr(self, "ledger", None)
            if ledger is not None:
                ledger.accepted += 1
            try:
                return await method(self, request, context)
            except MillibatchError as error:
                status = status_of(error)
                code = status.name
                level = logging.DEBUG if status in OVERLOAD_CODES else logging.INFO
                if log.isEnabledFor(level):
                    log.log(level, "request failed", extra={"rpc": rpc, "status": code, "detail": str(error),
                                                            "request_id": request_id(context)})
                fail(context, status, str(error))
                return None
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                # The handler aborted by itself and has already chosen (and logged) its status.
                code = context.code().name if context.code() is not None else "UNKNOWN"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("request failed", extra={"rpc": rpc, "status": code,
                                                        "request_id": request_id(context)})
                fail(context, grpc.StatusCode.INTERNAL, "internal error")
                return None
            finally:
                if ledger is not None:
                    if code == "CANCELLED":
                        ledger.cancelled += 1
                    else:
                        ledger.answered += 1
                # One place records every outcome; servicers opt in with an `on_request_done` attribute.
                recorder: RequestRecorder | None = getattr(self, "on_request_done", None)
                if recorder is not None:
                    recorder(rpc, request, code, time.perf_counter() - started)

        return wrapper  # type: ignore[return-value]

    return decorate
