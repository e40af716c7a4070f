"""Malformed request bytes get INVALID_ARGUMENT, not gRPC's UNKNOWN with a parser traceback.

grpc decodes a request before any servicer code runs, and a DecodeError there (bad UTF-8 in a string
field, a truncated or corrupt message) becomes UNKNOWN with internals in the message. This interceptor
takes decoding over for unary calls: the handler receives raw bytes, and the original deserializer runs
inside a try.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    decode: Callable[[bytes], Any] = handler.request_deserializer
    behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = handler.unary_unary

    async def decode_then_call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(raw)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request bytes are not a valid message for {method} (bad UTF-8 or corrupt wire format)",
            )
        return await behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(
        decode_then_call, request_deserializer=None, response_serializer=handler.response_serializer
    )


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decodes unary requests inside the call so malformed bytes get INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if (handler is None or handler.request_streaming or handler.response_streaming
                or handler.unary_unary is None or handler.request_deserializer is None):
            return handler
        return _guarded(handler, handler_call_details.method)
