"""Request bodies of the HTTP door, read and checked into plain values before any work is spent.

Checks are by hand rather than by a schema library: each refusal names its field (`param` in the error
JSON) and says what was expected, and a request is refused at its first bad field without building
objects for the rest. Unknown fields are ignored, as OpenAI-compatible servers do. JSON `null` counts
as an absent field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from millibatch.service.embeddings import EmbedOptions
from millibatch.service.http.errors import HttpRefusal, InvalidField
from millibatch.service.tokenization import Direction

#: The header that carries a request's deadline, in seconds from its arrival.
TIMEOUT_HEADER = "X-Request-Timeout"
#: The official OpenAI Python SDK sends each attempt's read timeout (its `timeout`, seconds) in this header.
#: Without it the server would go on computing answers for callers whose client has already given up:
#: under overload the queue then fills with abandoned calls, and the SDK retries each timeout twice.
SDK_TIMEOUT_HEADER = "X-Stainless-Read-Timeout"
#: OpenAI's Python and Node SDKs number each automatic retry of a call in this header (absent or 0: the first
#: attempt). A retry comes after the SDK's own timeout or a refusal, plus its backoff.
RETRY_COUNT_HEADER = "X-Stainless-Retry-Count"
ENCODING_FORMATS = ("float", "base64")


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    """The request's body as a JSON object; refused past `limit` bytes before it is read (when it says
    its length) or as soon as it passes the limit (when it is chunked)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked: aiohttp stops reading at client_max_size
        raise too_large(None, limit) from None
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidField("request body nests JSON too deeply", "body") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidField(f"request body is not valid JSON: {error}", "body") from None
    if not isinstance(data, dict):
        raise InvalidField(f"request body must be a JSON object, not {kind(data)}", "body")
    return data


def too_large(length: int | None, limit: int) -> HttpRefusal:
    size = f"{length} bytes" if length is not None else "more bytes than that"
    return HttpRefusal(413, "RESOURCE_EXHAUSTED", "request_too_large",
                       f"request body is {size}; the limit is {limit} bytes (max_receive_message_bytes)")


def stated_timeout(request: web.Request, default: float) -> float | None:
    """The seconds a request says it has: X-Request-Timeout when sent; else the read timeout the official
    OpenAI Python SDK sends with every attempt, where it is shorter than `default`; else None (the door
    then uses what it learned of such callers, service.http.patience). The SDK's header is not ours to
    refuse: a value it was not meant to carry is ignored."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        sdk = request.headers.get(SDK_TIMEOUT_HEADER)
        seconds = None if sdk is None else positive_seconds(sdk)
        return None if seconds is None else min(default, seconds)
    seconds = positive_seconds(raw)
    if seconds is None:
        raise InvalidField(f"header {TIMEOUT_HEADER} is {raw[:40]!r}; it must be a positive number of seconds",
                           TIMEOUT_HEADER)
    return seconds


def retry_number(request: web.Request) -> int:
    """Which automatic retry of its call `request` is, by the SDK's count (0: the first attempt, or not an
    SDK); a value the header was not meant to carry counts as 0."""
    raw = request.headers.get(RETRY_COUNT_HEADER, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 3 else 0


def positive_seconds(raw: str) -> float | None:
    """A header's positive, finite number of seconds, or None."""
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


# -- field readers ---------------------------------------------------------------------------------


def kind(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def text(value: object, param: str) -> str:
    """A string field; refused if it is not one or holds a lone surrogate (a \\ud800 escape), which is not
    Unicode text and which no tokenizer accepts."""
    if not isinstance(value, str):
        raise InvalidField(f"{param} must be a string, not {kind(value)}", param)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidField(f"{param} is not valid Unicode text (it holds a lone surrogate)", param) from None
    return value


def optional_text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name)
    return default if value is None else text(value, name)


def flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidField(f"{name} must be true or false, not {kind(value)}", name)
    return value


def integer(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"{name} must be an integer, not {kind(value)}", name)
    if value < minimum:
        raise InvalidField(f"{name} is {value}; it must be at least {minimum}", name)
    return value


def direction(body: dict[str, Any]) -> Direction:
    """`truncation_direction`: "right" (default, keeps the start) or "left" (keeps the end); any case."""
    value = optional_text(body, "truncation_direction", "right").lower()
    if value not in ("right", "left"):
        raise InvalidField(f"truncation_direction is {value[:40]!r}; use 'right' or 'left'", "truncation_direction")
    return "left" if value == "left" else "right"


# -- bodies ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingsBody:
    """POST /v1/embeddings: texts or token-id arrays, how to answer, and millibatch's options."""

    model: str
    #: Texts to embed, or None when the input is token ids.
    texts: list[str] | None
    #: Token-id arrays, or None when the input is text.
    ids: list[list[int]] | None
    #: Answer each vector as base64 of little-endian float32 bytes instead of a list of numbers.
    base64: bool
    options: EmbedOptions

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.ids or ())


def embeddings_body(body: dict[str, Any], max_inputs: int) -> EmbeddingsBody:
    """Read an embeddings request; more than `max_inputs` inputs are refused before each one is checked."""
    texts, ids = embedding_inputs(body.get("input"), max_inputs)
    encoding_format = optional_text(body, "encoding_format", "float")
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidField(f"encoding_format is {encoding_format[:40]!r}; use 'float' or 'base64'", "encoding_format")
    optional_text(body, "user")  # accepted (OpenAI clients send it) and otherwise ignored
    prompt = body.get("prompt")
    options = EmbedOptions(
        truncate=flag(body, "truncate"),
        normalize=None if body.get("normalize") is None else flag(body, "normalize"),
        dimensions=integer(body, "dimensions", 1),
        prompt_name=optional_text(body, "prompt_name"),
        prompt=None if prompt is None else text(prompt, "prompt"),
        direction=direction(body),
    )
    return EmbeddingsBody(optional_text(body, "model"), texts, ids, encoding_format == "base64", options)


def embedding_inputs(value: object, max_inputs: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """OpenAI's `input`: a string, a list of strings, a list of token ids, or a list of such lists."""
    if value is None:
        raise InvalidField("input is required: a string, a list of strings, or token ids", "input")
    if isinstance(value, str):
        return [text(value, "input")], None
    if not isinstance(value, list):
        raise InvalidField(f"input must be a string, a list of strings, or token ids; not {kind(value)}", "input")
    if not value:
        raise InvalidField("input is an empty list; send at least one text or token array", "input")
    first = value[0]
    if isinstance(first, int) and not isinstance(first, bool):
        return None, [token_ids(value, "input")]
    count(len(value), max_inputs, "input", "inputs")
    if isinstance(first, str):
        return [text(item, f"input[{i}]") for i, item in enumerate(value)], None
    if isinstance(first, list):
        return None, [token_ids(item, f"input[{i}]") for i, item in enumerate(value)]
    raise InvalidField(f"input[0] must be a string or token ids, not {kind(first)}", "input")


def count(found: int, limit: int, param: str, what: str) -> None:
    """Refuse an empty list or one over the per-request limit (max_inputs_per_request)."""
    if not 1 <= found <= limit:
        raise InvalidField(f"{found} {what} in one request; send between 1 and {limit}", param)


def token_ids(value: object, param: str) -> list[int]:
    """A list of integers (their range is checked against the model's vocabulary later)."""
    if not isinstance(value, list):
        raise InvalidField(f"{param} must be a list of token ids, not {kind(value)}", param)
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise InvalidField(f"{param}[{index}] must be an integer token id, not {kind(item)}", param)
    return value


@dataclass(frozen=True, slots=True)
class RerankBody:
    """POST /v1/rerank (Cohere / Jina): a query, documents, how many to return and whether to echo them."""

    model: str
    query: str
    documents: list[str]
    #: Return this many best documents; None: all.
    top_n: int | None
    return_documents: bool
    truncate: bool
    direction: Direction


def rerank_body(body: dict[str, Any], max_documents: int) -> RerankBody:
    """Read a rerank request; documents are strings or objects with a `text` string (Cohere, Jina)."""
    query = body.get("query")
    if query is None:
        raise InvalidField("query is required", "query")
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise InvalidField(f"documents must be a list of strings or of {{\"text\": ...}} objects, not "
                           f"{kind(documents)}", "documents")
    count(len(documents), max_documents, "documents", "documents")
    return RerankBody(
        model=optional_text(body, "model"),
        query=text(query, "query"),
        documents=[document_text(d, f"documents[{i}]") for i, d in enumerate(documents)],
        top_n=integer(body, "top_n", 1),
        return_documents=flag(body, "return_documents"),
        truncate=flag(body, "truncate"),
        direction=direction(body),
    )


def document_text(value: object, param: str) -> str:
    if isinstance(value, dict):
        if "text" not in value:
            raise InvalidField(f"{param} is an object without a \"text\" field", param)
        return text(value["text"], f"{param}.text")
    return text(value, param)


def documents_echo(documents: Sequence[str], index: int) -> dict[str, str]:
    """A result's `document` as Cohere and Jina write it."""
    return {"text": documents[index]}
