"""Errors on the HTTP door: OpenAI's error JSON with the status of status.STATUS's HTTP column.

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "invalid_input"}}

`code` is the error's machine-readable reason (millibatch's own, as in the metrics); `type` follows
from the HTTP status the way OpenAI's clients read it. Refusals that only HTTP has (a body over the
size limit, a route or method that does not exist) are `HttpRefusal`s with their own status.

A 429 says when the call would likely fit (Retry-After, retry-after-ms), and OpenAI's Python SDK retries it
twice by default. While refusals persist (service.refusal_watch) a 429, and a 504 for a deadline the server
could not meet, also say `x-should-retry: false`, which OpenAI's Python and Node SDKs obey: under
sustained overload every retry is one more call to refuse, on the core the engine needs (docs/OVERLOAD.md,
"The official OpenAI client").
"""

from __future__ import annotations

import json
import logging
import math

from aiohttp import web

from millibatch.errors import InvalidInput, MillibatchError
from millibatch.service.status import http_status_of

log = logging.getLogger("millibatch.requests")

#: Load-shedding answers come by the thousand under overload: logged at DEBUG only (metrics count them).
OVERLOAD_STATUSES = frozenset({429, 504})


class InvalidField(InvalidInput):
    """A request body field has the wrong type or value; `param` names it in the error JSON."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class HttpRefusal(Exception):
    """A refusal decided by the HTTP door itself, with its HTTP status and the status name it is counted
    under in the metrics (the gRPC name of the nearest case)."""

    def __init__(self, http_status: int, status_name: str, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status, self.status_name, self.code = http_status, status_name, code


def error_type(http_status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if http_status == 401:
        return "authentication_error"
    if http_status == 429:
        return "rate_limit_error"
    if http_status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_response(http_status: int, message: str, code: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped error answer."""
    body = {"error": {"message": message, "type": error_type(http_status), "param": param, "code": code}}
    return web.Response(status=http_status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


def answer_failure(rpc: str, error: BaseException, request_id: str, retry: bool = True) -> tuple[str, web.Response]:
    """Log a failed request and say how it ends: (status name for the metrics, the answer); without
    `retry`, a refusal for load (429, 504) tells the caller's SDK not to retry it."""
    if isinstance(error, HttpRefusal):
        _log(logging.INFO, rpc, error.status_name, str(error), request_id)
        return error.status_name, error_response(error.http_status, str(error), error.code)
    if isinstance(error, MillibatchError):
        status = http_status_of(error)
        level = logging.DEBUG if status in OVERLOAD_STATUSES else logging.INFO
        _log(level, rpc, error.status, str(error), request_id)
        return error.status, error_response(status, str(error), error.reason, getattr(error, "param", None),
                                            _headers(status, getattr(error, "retry_after", None), retry))
    log.error("request failed", exc_info=error, extra={"rpc": rpc, "status": "INTERNAL", "request_id": request_id})
    return "INTERNAL", error_response(500, "internal error", "internal")


def _headers(http_status: int, retry_after: float | None, retry: bool) -> dict[str, str] | None:
    if http_status == 401:
        return {"WWW-Authenticate": "Bearer"}
    headers: dict[str, str] = {}
    if retry_after is not None:
        # Retry-After counts whole seconds; OpenAI's clients read retry-after-ms first.
        headers = {"Retry-After": str(math.ceil(retry_after)), "retry-after-ms": str(math.ceil(retry_after * 1e3))}
    if http_status in OVERLOAD_STATUSES and not retry:
        headers["x-should-retry"] = "false"
    return headers or None


def _log(level: int, rpc: str, status: str, detail: str, request_id: str) -> None:
    if log.isEnabledFor(level):
        log.log(level, "request failed", extra={"rpc": rpc, "status": status, "detail": detail,
                                                "request_id": request_id})
