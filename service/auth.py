"""Optional API keys: `authorization: Bearer KEY` metadata (or HTTP header), checked in constant time;
health exempt.

Keys are compared with `hmac.compare_digest` against every configured key (no early exit), and neither
the presented nor the configured keys are ever logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from pydantic import SecretStr

log = logging.getLogger("millibatch.auth")

#: Health checks (kubelet probes, load balancers) never need a key.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
DENIED = "missing or invalid API key; send metadata 'authorization: Bearer <key>'"


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    """The token of the first `authorization: Bearer …` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
    return None


def _deny_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED without reading the request."""

    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    async def deny_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        yield  # pragma: no cover - makes this an async generator, as streaming responses require

    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream, None, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, None, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream, None, serializer)
    return grpc.unary_unary_rpc_method_handler(deny, None, serializer)


class ApiKeys:
    """The configured keys, and the one check every door makes against them."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        if not keys:
            raise ValueError("ApiKeys needs at least one key")
        self._keys = [k.get_secret_value().encode() for k in keys]

    def allowed(self, token: bytes | None) -> bool:
        """True when `token` equals one of the keys; compares against all of them in constant time."""
        if token is None:
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        return matched


class ApiKeyAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Server interceptor: calls without a valid bearer key get UNAUTHENTICATED before any work."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._keys = ApiKeys(keys)

    def allowed(self, token: bytes | None) -> bool:
        """True when `token` equals one of the keys (ApiKeys.allowed)."""
        return self._keys.allowed(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if self.allowed(bearer_token(handler_call_details.invocation_metadata)):
            return handler
        log.info("request refused", extra={"rpc": method, "status": "UNAUTHENTICATED"})
        return _deny_handler(handler)
