"""The one place errors become gRPC statuses."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from millibatch.errors import MillibatchError

log = logging.getLogger("millibatch.requests")

STATUS_CODES: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def status_of(error: MillibatchError) -> grpc.StatusCode:
    """The gRPC status code for a millibatch error."""
    return STATUS_CODES[error.status]


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's `x-request-id` metadata, if any, for correlating logs."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)[:128]
    return "-"


def grpc_errors(rpc: str) -> Callable[[Handler], Handler]:
    """Turn MillibatchError into its status and anything unexpected into INTERNAL without internals;
    log one line per failed request."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(self, request, context)
            except MillibatchError as error:
                code = status_of(error)
                log.info("request failed", extra={"rpc": rpc, "status": code.name, "detail": str(error),
                                                   "request_id": request_id(context)})
                await context.abort(code, str(error))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request failed", extra={"rpc": rpc, "status": "INTERNAL",
                                                        "request_id": request_id(context)})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return wrapper  # type: ignore[return-value]

    return decorate
