"""The edge: every method of every gRPC servicer is registered through here, wrapped the same way.

A wrapped method takes the request's raw bytes. It decodes them inside the call, so malformed bytes get
INVALID_ARGUMENT with a message instead of gRPC's UNKNOWN with a parser trace; turns MillibatchError
into its status (status.STATUS) and anything unexpected into INTERNAL without internals; logs one line
per failed call; and tells the data plane that the call started and how it ended (call ledger,
request metrics). Doing this at registration, once per method, instead of in an interceptor or a
decorator, keeps it off the list of things each call pays for and leaves no servicer method out.

A servicer may name gates: unary methods whose calls can be refused before their request is even read.
While the server is refusing calls (`DataPlane.refusing`), such a method is served as a stream-unary
one, so its handler runs before gRPC has received the request message: the gate decides from the
call's deadline alone, and a refused call costs neither the receive nor the decoding (about 10% of a
refusal's CPU beside a busy engine; no goodput gain measured, so off by default: docs/OVERLOAD.md).
Otherwise it is served as the plain unary method, which costs an answered call less. The client sees
the same unary method either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from millibatch.errors import InvalidInput
from millibatch.service.dataplane import DataPlane
from millibatch.service.status import fail, failure

#: Label prefixes of the services' RPCs in metrics and logs ("Embed", "v2.ModelInfer", "health.Check").
RPC_PREFIXES = {"inference.GRPCInferenceService": "v2.", "grpc.health.v1.Health": "health."}
#: Request fields naming the model a call is for, by protocol.
MODEL_FIELDS = ("model", "model_name", "name")

AddToServer = Callable[[Any, Any], None]
#: Decides from the call's context alone (its deadline) whether to refuse it before its request is read:
#: the model it refused the call for, with the status set on the context; None lets the call go on.
Gate = Callable[[grpc.aio.ServicerContext], str | None]


class _Registrations:
    """Stands in for a server while a generated `add_*_to_server` hands over its method handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers arrive through add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = dict(handlers)


def register(server: grpc.aio.Server, add_to_server: AddToServer, servicer: Any, plane: DataPlane, *,
             ledger: bool = True, gates: Mapping[str, Gate] | None = None) -> list[str]:
    """Register `servicer` through its generated `add_to_server` with every method wrapped; returns the
    full names of the services it serves. Without `ledger` its calls are counted in the metrics only
    (health checks: probes are not work a drain must finish). `gates`: by method name, the unary methods
    that may be refused before their request is read, while the plane is refusing calls."""
    registrations = _Registrations()
    add_to_server(servicer, registrations)
    if not registrations.services:
        raise RuntimeError(f"{add_to_server.__name__} registered no method handlers")
    for service, handlers in registrations.services.items():
        prefix = RPC_PREFIXES.get(service, "")
        wrapped = {name: wrap(handler, f"{prefix}{name}", f"/{service}/{name}", plane, ledger)
                   for name, handler in handlers.items()}
        gated = {name: wrap(handlers[name], f"{prefix}{name}", f"/{service}/{name}", plane, ledger, gate)
                 for name, gate in (gates or {}).items() if name in handlers}
        if gated:
            # Looked up per call (a registered method would take precedence, fixed at start-up).
            server.add_generic_rpc_handlers((_WhileRefusing(service, wrapped, gated, plane),))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, {n: h for n, h in wrapped.items() if n not in gated})
    return list(registrations.services)


class _WhileRefusing(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """Serves the gated methods of a service: the gated handler while the plane is refusing calls, the
    plain one otherwise."""

    def __init__(self, service: str, plain: Mapping[str, grpc.RpcMethodHandler],
                 gated: Mapping[str, grpc.RpcMethodHandler], plane: DataPlane) -> None:
        self._plain = {f"/{service}/{name}": plain[name] for name in gated}
        self._gated = {f"/{service}/{name}": handler for name, handler in gated.items()}
        self._plane = plane

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        return (self._gated if self._plane.refusing else self._plain).get(method)


def wrap(handler: grpc.RpcMethodHandler, rpc: str, path: str, plane: DataPlane,
         ledger: bool = True, gate: Gate | None = None) -> grpc.RpcMethodHandler:
    """`handler` taking raw bytes, with the edge around it (see the module docstring); without `ledger`
    its calls are counted in the metrics only. With `gate`, a unary `handler` is served as stream-unary
    behind it: refused before its request is read, or the request read and handled as the plain method
    handles it."""
    decode = _decoder(handler.request_deserializer, path)
    serializer = handler.response_serializer
    if gate is not None and (handler.request_streaming or handler.response_streaming):
        raise ValueError(f"{path}: only unary methods can be gated")
    if handler.request_streaming:
        # A stream of requests (KServe's ModelStreamInfer, reflection): the stream is one call; its
        # messages are decoded by gRPC and counted by the servicer one by one.
        behaviour = handler.stream_stream or handler.stream_unary
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _stream(rpc, behaviour, None, plane, ledger), handler.request_deserializer, serializer)
        return grpc.stream_unary_rpc_method_handler(
            _unary(rpc, behaviour, None, None, plane, ledger), handler.request_deserializer, serializer)
    model_field = _model_field(handler.request_deserializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_stream(rpc, handler.unary_stream, decode, plane, ledger), None,
                                                    serializer)
    call = _unary(rpc, handler.unary_unary, decode, model_field, plane, ledger, gate)
    if gate is not None:
        return grpc.stream_unary_rpc_method_handler(call, None, serializer)
    return grpc.unary_unary_rpc_method_handler(call, None, serializer)


def _decoder(deserializer: Callable[[bytes], Any] | None, path: str) -> Callable[[Any], Any]:
    if deserializer is None:
        return lambda raw: raw

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            raise InvalidInput(
                f"request bytes are not a valid message for {path} (bad UTF-8 or corrupt wire format)"
            ) from None

    return decode


def _model_field(deserializer: Callable[[bytes], Any] | None) -> str | None:
    """The request message's field that names a model, if it has one."""
    message = getattr(deserializer, "__self__", None)
    fields = getattr(getattr(message, "DESCRIPTOR", None), "fields_by_name", {})
    return next((name for name in MODEL_FIELDS if name in fields), None)


def _unary(rpc: str, behaviour: Callable[..., Awaitable[Any]], decode: Callable[[Any], Any] | None,
           model_field: str | None, plane: DataPlane, ledger: bool = True,
           gate: Gate | None = None) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """The edge around a unary method. With `gate`, the call is stream-unary on the wire side: the gate
    runs first, and the one request message is read only if it lets the call go on."""

    async def call(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "OK"
        request = None
        refused_for = None
        if ledger:
            plane.call_started()
        try:
            if gate is not None:
                refused_for = gate(context)
                if refused_for is not None:
                    code = _code_name(context)
                    return None
                raw = await _read_request(context)
            request = raw if decode is None else decode(raw)
            response = await behaviour(request, context)
            if response is None:  # the handler set a status itself (status.refuse)
                code = _code_name(context)
            return response
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            # The handler aborted by itself (an API-key refusal) and has already chosen its status.
            code = _code_name(context)
            raise
        except Exception as error:
            code, status, details = failure(rpc, error, context)
            fail(context, status, details)
            return None
        finally:
            if ledger:
                if refused_for is not None:
                    model = refused_for
                else:
                    model = getattr(request, model_field, "") if model_field and request is not None else ""
                plane.call_ended(rpc, model, code, time.perf_counter() - started)
            else:
                plane.probe_ended(rpc, code, time.perf_counter() - started)

    return call


async def _read_request(context: grpc.aio.ServicerContext) -> Any:
    """The one request message of a unary call served as stream-unary."""
    raw = await context.read()
    if raw is grpc.aio.EOF:
        raise InvalidInput("the call carried no request message")
    return raw


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    # `_name_` is what Enum's `name` property returns, read without the property's Python frame (this
    # runs for every refusal).
    return str(code._name_) if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _stream(rpc: str, behaviour: Callable[..., Any], decode: Callable[[Any], Any] | None, plane: DataPlane,
            ledger: bool = True) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if ledger:
            plane.call_started()
        cancelled = False
        try:
            responses = behaviour(request if decode is None else decode(request), context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:  # a coroutine that writes its responses with context.write (the health service's Watch)
                await responses
        except asyncio.CancelledError:
            cancelled = True
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            _code, status, details = failure(rpc, error, context)
            fail(context, status, details)
        finally:
            if ledger:
                plane.stream_ended(cancelled)

    return call
