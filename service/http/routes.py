"""The HTTP routes: JSON in, the shared embedding and rerank operations over the data plane, JSON out.

- POST /v1/embeddings: OpenAI's request and response. `input` is text or token ids (taken exactly as
  sent, see tokenization.id_rows); `encoding_format` "base64" is each vector's little-endian float32
  bytes, what the openai client decodes. Also millibatch's options: `truncate`,
  `truncation_direction`, `prompt_name`, `prompt`, `normalize`.
- POST /v1/rerank: Cohere / Jina's request and response (score rule: service/rerank.py).
- GET /v1/models, GET /v1/models/{model}: OpenAI's model list, with each model's task, size and prompts.
- GET /health: 200 while serving, 503 while warming up, draining or with an unhealthy model.
The deadline is the X-Request-Timeout header (seconds); else the OpenAI SDK's own read timeout
(X-Stainless-Read-Timeout) where shorter than default_deadline_ms; else default_deadline_ms, or less where
callers like this one have been hanging up sooner (service.http.patience).
While the server sheds load (service.refusal_watch), an OpenAI SDK's automatic retry is refused at once, before
its body is read: it follows a timeout or refusal and the SDK's backoff, and first attempts get the engine.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from millibatch.errors import NotServing, RetryRefused
from millibatch.service.dataplane import DataPlane
from millibatch.service.embeddings import embed_ids, embed_texts
from millibatch.service.http.edge import Call, HttpEdge
from millibatch.service.http.patience import ClientPatience, patience_group
from millibatch.service.http.schemas import (
    documents_echo,
    embeddings_body,
    read_json,
    rerank_body,
    retry_number,
    stated_timeout,
)
from millibatch.service.registry import ServedModel
from millibatch.service.rerank import rerank


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    """A compact JSON answer. orjson writes numpy float32 arrays directly, each value in the shortest form
    that reads back as the same float32: 256 vectors of 384 values take 3.5 ms instead of the 51 ms of
    json.dumps over Python floats, time the event loop (and every gRPC call on it) would otherwise wait."""
    return web.Response(status=status, body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")


def usage(tokens: int) -> dict[str, int]:
    """OpenAI's usage object; every token is a prompt token for an encoder."""
    return {"prompt_tokens": tokens, "total_tokens": tokens}


class Routes:
    """The route handlers of one server, over its data plane."""

    def __init__(self, plane: DataPlane, patience: ClientPatience | None) -> None:
        self.plane = plane
        self.patience = patience
        settings = plane.settings
        self.body_limit = settings.max_receive_message_bytes
        self.max_inputs = settings.max_inputs_per_request
        #: False until every model is loaded and warm: requests get 503 meanwhile, not 404.
        self.warm = False
        #: Unix time the door opened: the `created` of every model in /v1/models.
        self.created = int(time.time())

    def add_to(self, app: web.Application, edge: HttpEdge) -> None:
        """Register every route, wrapped by `edge`."""
        app.router.add_post("/v1/embeddings", edge.wrap(self.embeddings, "http.embeddings"))
        app.router.add_post("/v1/rerank", edge.wrap(self.rerank, "http.rerank"))
        app.router.add_get("/v1/models", edge.wrap(self.models, "http.models"), allow_head=False)
        app.router.add_get("/v1/models/{model}", edge.wrap(self.model_card, "http.models"), allow_head=False)
        app.router.add_get("/health", edge.wrap(self.health, "http.health", probe=True))

    def model(self, name: str, task: str) -> ServedModel:
        """The ready model a request names (the default when empty)."""
        if not self.warm:
            raise NotServing("server is warming up; GET /health answers 200 once it serves")
        return self.plane.model(name, task)

    def deadline(self, request: web.Request, call: Call) -> float:
        """A compute request's deadline on the batchers' clock, after refusing it if it is an SDK's automatic
        retry while the server sheds load: a retry follows a timeout or a refusal and the SDK's backoff, so
        its answer would most likely be late for its caller, and it would take the place of a first attempt
        that can still be answered in time (429, and x-should-retry: false)."""
        plane = self.plane
        if plane.overloaded and (number := retry_number(request)):
            raise RetryRefused(f"retry {number} of this call is refused while the server is shedding load: "
                               "first attempts go first; send the call again once refusals stop")
        return plane.deadline(self.timeout(request, call))

    def timeout(self, request: web.Request, call: Call) -> float:
        """The seconds `request` has: what it states, else what callers of its group have waited."""
        plane = self.plane
        seconds = stated_timeout(request, plane.default_timeout)
        if seconds is not None:
            return seconds
        if self.patience is None:
            return plane.default_timeout
        group = call.patience_group = patience_group(request.headers)
        return self.patience.timeout(group, plane.default_timeout)

    async def embeddings(self, request: web.Request, call: Call) -> web.Response:
        """POST /v1/embeddings."""
        plane = self.plane
        deadline = self.deadline(request, call)
        body = embeddings_body(await read_json(request, self.body_limit), self.max_inputs)
        call.model = body.model
        model = self.model(body.model, "embed")
        if body.texts is not None:
            embedded = await embed_texts(plane, model, body.texts, body.options, deadline)
        else:
            embedded = await embed_ids(plane, model, body.ids or [], body.options, deadline)
        vectors = np.ascontiguousarray(embedded.vectors, dtype="<f4")
        # base64: each row's little-endian float32 bytes; float: the rows themselves, written by orjson.
        encoded: Any = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors] if body.base64 else vectors
        return json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": model.name,
            "usage": usage(embedded.done.tokens),
        })

    async def rerank(self, request: web.Request, call: Call) -> web.Response:
        """POST /v1/rerank."""
        plane = self.plane
        deadline = self.deadline(request, call)
        body = rerank_body(await read_json(request, self.body_limit), self.max_inputs)
        call.model = body.model
        model = self.model(body.model, "classify")
        reranked = await rerank(plane, model, body.query, body.documents, top_n=body.top_n or 0,
                                truncate=body.truncate, direction=body.direction, deadline=deadline)
        results = []
        for ranked in reranked.ranked:
            result: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
            if body.return_documents:
                result["document"] = documents_echo(body.documents, ranked.index)
            results.append(result)
        return json_response({"results": results, "model": model.name, "usage": usage(reranked.done.tokens)})

    async def models(self, request: web.Request, call: Call) -> web.Response:
        """GET /v1/models: every served model, ready or not."""
        registry = self.plane.registry
        return json_response({"object": "list", "data": [self.card(m) for m in registry.models.values()]})

    async def model_card(self, request: web.Request, call: Call) -> web.Response:
        """GET /v1/models/{model}."""
        call.model = request.match_info["model"]
        return json_response(self.card(self.plane.registry.known(call.model)))

    def card(self, model: ServedModel) -> dict[str, Any]:
        """OpenAI's model object, with what millibatch knows about the model besides."""
        manifest = model.manifest
        return {
            "id": model.name, "object": "model", "created": self.created, "owned_by": "millibatch",
            "task": manifest.task, "dimensions": manifest.dimensions, "max_length": manifest.max_length,
            "ready": model.ready and self.plane.registry.accepting,
            "prompts": manifest.prompts, "default_prompt_name": manifest.default_prompt_name,
        }

    async def health(self, request: web.Request, call: Call) -> web.Response:
        """GET /health: 200 when every model serves; 503 with the reason while warming up or draining."""
        registry = self.plane.registry
        if not registry.accepting:
            return json_response({"status": "draining"}, 503)
        if not self.warm:
            return json_response({"status": "warming up"}, 503)
        unhealthy = sorted(name for name, model in registry.models.items() if not model.ready)
        if unhealthy:
            return json_response({"status": "not serving", "unhealthy_models": unhealthy}, 503)
        return json_response({"status": "serving", "models": list(registry.models)})

