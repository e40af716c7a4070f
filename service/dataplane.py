"""The data plane: what every door does with a request, written once.

The millibatch.v1 and KServe V2 servicers only convert between their wire format and these calls. The
plane owns the request limits, the refusal before any work is spent (admission's `refusal`, ahead of
tokenizing), tokenizing, the trip through the model's batcher, the rule that no answer leaves after
its deadline, and the accounting of every call: the call ledger and the request metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding

from millibatch.batching.work import Row, RowResult, WorkItem
from millibatch.errors import InvalidInput, Refusal
from millibatch.service.ledger import CallLedger
from millibatch.service.metrics import Metrics
from millibatch.service.registry import ModelRegistry, ServedModel
from millibatch.service.tokenization import Direction, to_rows
from millibatch.settings import Settings

#: The fewest tokens an input can take: a BERT-style tokenizer's two special tokens.
LEAST_TOKENS = 2


@dataclass(frozen=True, slots=True)
class Computed:
    """A request after the batcher: per-row results in input order, and what the response reports."""

    results: list[RowResult]
    item: WorkItem
    #: Tokens of the request's rows (its usage).
    tokens: int
    tokenize_seconds: float
    #: The tokenizer's encodings of the inputs (offsets, word ids), when the plane tokenized them.
    encodings: Sequence[Encoding] = ()


class DataPlane:
    """Limits, tokenizing, batching and accounting for every protocol."""

    def __init__(self, registry: ModelRegistry, settings: Settings, metrics: Metrics | None = None,
                 ledger: CallLedger | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.ledger = ledger or CallLedger()
        # Every call is counted here, refusals included: the tally itself, not through Metrics.
        self._tally = metrics.tally if metrics is not None else None
        #: Seconds a call has when its caller gives no deadline (default_deadline_ms).
        self.default_timeout = settings.default_deadline_ms / 1000.0
        self._max_inputs = settings.max_inputs_per_request
        self._max_tokens = settings.max_tokens_per_request
        #: True while the server is refusing calls (service.refusal_watch): the gRPC door then refuses calls
        #: to a compute method before reading their request when even the least request would not fit.
        self.refusing = False
        #: True while refusals persist (service.refusal_watch, whatever else listens to it): the HTTP door then
        #: tells OpenAI's SDKs not to retry its 429s and 504s.
        self.overloaded = False

    # -- requests --------------------------------------------------------------------------------

    def model(self, name: str, task: str | None = None) -> ServedModel:
        """The served model a request names (the default when empty), ready for work."""
        return self.registry.get(name, task)

    def deadline(self, remaining: float | None) -> float:
        """The call's deadline as an absolute time on the batchers' clock (time.monotonic, the clock the
        event loop reads), from the seconds its caller has left (the gRPC deadline, a request header),
        else the configured default."""
        return time.monotonic() + (self.default_timeout if remaining is None else remaining)

    def check_count(self, count: int) -> None:
        """Refuse an empty request or one with more inputs than the limit."""
        limit = self._max_inputs
        if not count:
            raise InvalidInput(f"inputs is empty; send between 1 and {limit} texts")
        if count > limit:
            raise InvalidInput(f"{count} inputs in one request; the limit is {limit} (send between 1 and {limit})")

    def refusal(self, model: ServedModel, texts: Sequence[str], deadline: float) -> Refusal | None:
        """Why a request of `texts` is refused at once (Overloaded: the queue ahead outlasts its deadline;
        DeadlineUnmeetable), or None; InvalidInput is raised for no or too many inputs. The cheapest
        refusal: a handler that asks this before reading the rest of its request spends next to nothing
        on the calls it refuses under overload, and ends them itself (`status.refuse`) rather than
        raising through its frames."""
        self.check_count(len(texts))
        return model.batcher.refusal(deadline, len(texts), self._least_tokens(texts, model))

    def sole_model(self, task: str) -> ServedModel | None:
        """The served model, when exactly one is served, it does `task` and it takes work now: the only
        model a request for `task` can be for, known before the request (which names it) is read."""
        models = self.registry.models
        if len(models) != 1 or not self.registry.accepting:
            return None
        model = next(iter(models.values()))
        return model if model.ready and model.manifest.task == task else None

    def refusal_unread(self, model: ServedModel, deadline: float) -> Refusal | None:
        """`refusal` for a request not yet read: Overloaded or DeadlineUnmeetable when even the least
        request, one input of LEAST_TOKENS, would not fit, which `refusal` would then give too. Counted as
        one row refused."""
        return model.batcher.refusal(deadline, 1, LEAST_TOKENS)

    async def compute_texts(self, model: ServedModel, texts: Sequence[str], pairs: Sequence[str] = (), *,
                            truncate: bool, deadline: float, direction: Direction = "right",
                            prompt: str = "", prechecked: bool = False) -> Computed:
        """Tokenize texts (and second texts of pairs) and run them through the model's batcher; `prompt` is
        prepended to every text (its tokens count in the usage), `direction` is the end truncation cuts.
        Unless the caller has (`prechecked`), `refusal` first: nothing is spent on tokenizing a refusal."""
        if not prechecked:
            refused = self.refusal(model, texts, deadline)
            if refused is not None:
                raise refused
        started = time.perf_counter()
        encodings = await model.encoder.encode_async(texts, pairs, truncate=truncate, direction=direction,
                                                     prompt=prompt)
        tokenize_seconds = time.perf_counter() - started
        return await self.compute_rows(model, to_rows(encodings), deadline, tokenize_seconds, encodings)

    @staticmethod
    def _least_tokens(texts: Sequence[str], model: ServedModel) -> int:
        """A low estimate of the tokens per input before tokenizing: English word pieces run about four
        characters each; six keeps the estimate below the truth for nearly every text, so a request is
        refused early only when it would have been refused anyway."""
        chars = 0
        for text in texts:
            chars += len(text)
        return min(model.encoder.max_length, LEAST_TOKENS + chars // (6 * len(texts)))

    async def compute_rows(self, model: ServedModel, rows: list[Row], deadline: float,
                           tokenize_seconds: float = 0.0, encodings: Sequence[Encoding] = ()) -> Computed:
        """Run tokenized rows through the model's batcher; refuse them, or answer before the deadline."""
        self.check_count(len(rows))
        tokens = 0
        for row in rows:
            tokens += row.length
        if tokens > self._max_tokens:
            raise InvalidInput(f"request has {tokens} tokens; the limit is {self._max_tokens}")
        item = model.batcher.submit(rows, deadline)
        results = await item.future
        model.batcher.check_in_time(item)
        if self.metrics is not None:
            self.metrics.work_done(model.name, item, tokenize_seconds)
        return Computed(results, item, tokens, tokenize_seconds, encodings)

    async def tokenize(self, model: ServedModel, texts: Sequence[str], pairs: Sequence[str] = (), *,
                       truncate: bool, add_special_tokens: bool = True) -> list[Encoding]:
        """Tokens of each text, without running the model."""
        self.check_count(len(texts))
        return await model.encoder.encode_async(texts, pairs, truncate=truncate, add_special_tokens=add_special_tokens)

    # -- accounting ------------------------------------------------------------------------------

    def call_started(self) -> None:
        """A call reached a handler (of any door)."""
        self.ledger.accepted += 1

    def call_ended(self, rpc: str, model: str, code: str, seconds: float) -> None:
        """A unary call ended with status `code` after `seconds`: ledger and metrics."""
        if code == "CANCELLED":
            self.ledger.cancelled += 1
        else:
            self.ledger.answered += 1
        self.count(rpc, model, code, seconds)

    def probe_ended(self, rpc: str, code: str, seconds: float) -> None:
        """A health check ended: counted in the metrics, not in the ledger (probes are not work a drain
        must finish)."""
        self.count(rpc, "", code, seconds)

    def stream_ended(self, cancelled: bool) -> None:
        """A streaming call ended (its messages were counted one by one)."""
        if cancelled:
            self.ledger.cancelled += 1
        else:
            self.ledger.answered += 1

    def count(self, rpc: str, model: str, code: str, seconds: float) -> None:
        """Count one request (a unary call, or one message of a stream) in the metrics."""
        if self._tally is not None:
            self._tally.request_done(self.registry.metric_label(model), rpc, code, seconds)
