"""The HTTP edge: every route is registered wrapped the same way, as every gRPC method is (service/edge.py).

A wrapped route checks the API key (health exempt) before reading anything, turns MillibatchError into
its HTTP status (status.STATUS) and OpenAI's error JSON, anything unexpected into 500 without
internals, logs one line per failed request, and tells the data plane that the request started and how
it ended: the call ledger and the request metrics, under an rpc label such as "http.embeddings".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from millibatch.errors import Unauthenticated
from millibatch.service.auth import ApiKeys, bearer_token
from millibatch.service.dataplane import DataPlane
from millibatch.service.http.errors import HttpRefusal, answer_failure
from millibatch.service.http.patience import ClientPatience

DENIED = "missing or invalid API key; send the header 'Authorization: Bearer <key>'"
#: The rpc label of requests that matched no route (one label, so metrics stay bounded).
OTHER_RPC = "http.other"


@dataclass
class Call:
    """What a route tells the edge about its request: the model it named (for the metrics label)."""

    model: str = ""
    #: The caller's group (service.http.patience) when the request stated no deadline; None when it did.
    patience_group: str | None = None


Route = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    """The caller's X-Request-Id header, if any, for correlating logs."""
    return request.headers.get("X-Request-Id", "-")[:128]


class HttpEdge:
    """Wraps routes with authentication, error answers and accounting."""

    def __init__(self, plane: DataPlane, keys: ApiKeys | None, patience: ClientPatience | None) -> None:
        self.plane = plane
        self.keys = keys
        self.patience = patience

    def wrap(self, route: Route, rpc: str, *, probe: bool = False) -> Handler:
        """`route` with the edge around it; a `probe` (health) needs no key and is counted in the metrics
        only (probes are not work a drain must finish)."""
        plane = self.plane

        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            call = Call()
            code = "OK"
            if not probe:
                plane.call_started()
            try:
                if not probe:
                    self.authenticate(request)
                return await route(request, call)
            except asyncio.CancelledError:  # the client went away (handler_cancellation)
                code = "CANCELLED"
                # A call that stated no deadline: its hang-up says how long callers like it wait.
                if call.patience_group is not None and self.patience is not None:
                    self.patience.hung_up(call.patience_group, time.perf_counter() - started)
                raise
            except Exception as error:
                code, response = answer_failure(rpc, error, request_id(request), retry=not plane.overloaded)
                return response
            finally:
                if probe:
                    plane.probe_ended(rpc, code, time.perf_counter() - started)
                else:
                    plane.call_ended(rpc, call.model, code, time.perf_counter() - started)

        return handle

    def authenticate(self, request: web.Request) -> None:
        """Refuse a request without a valid bearer key when keys are configured (before reading its body)."""
        if self.keys is None:
            return
        header = request.headers.get("Authorization")
        if not self.keys.allowed(bearer_token([("authorization", header)] if header is not None else ())):
            raise Unauthenticated(DENIED)

    @web.middleware
    async def unmatched(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Requests no route takes (unknown path, wrong method) get the error JSON too, and are counted."""
        if request.match_info.http_exception is None:
            return await handler(request)
        error = request.match_info.http_exception
        started = time.perf_counter()
        self.plane.call_started()
        status_name = "NOT_FOUND" if error.status == 404 else "UNIMPLEMENTED"
        path = request.path[:200]
        message = (f"no route {path!r}; the routes are POST /v1/embeddings, POST /v1/rerank, GET /v1/models "
                   "and GET /health" if error.status == 404 else f"{request.method[:20]} is not allowed on {path!r}")
        refusal = HttpRefusal(error.status, status_name, "unknown_route" if error.status == 404 else "bad_method",
                              message)
        code, response = answer_failure(OTHER_RPC, refusal, request_id(request))
        if "Allow" in error.headers:  # 405 says which methods the route takes
            response.headers["Allow"] = error.headers["Allow"]
        self.plane.call_ended(OTHER_RPC, "", code, time.perf_counter() - started)
        return response
