"""Server-side tokenization with the Rust `tokenizers` library, checked against the model's limits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Encoding, Tokenizer

from millibatch.batching.work import Row
from millibatch.errors import InputTooLong, InvalidInput

#: Below this many characters in a request, tokenizing inline is cheaper than a thread hop.
INLINE_CHARS = 4096
#: Up to this many inputs, encode one by one rather than through the tokenizer's thread pool.
SEQUENTIAL_INPUTS = 8

#: Which end of an over-long input truncation cuts away: "right" keeps the start, "left" the end.
Direction = Literal["right", "left"]


class TextEncoder:
    """Turns texts (and optional second texts of pairs) into model rows."""

    def __init__(self, tokenizer_file: Path, max_length: int, max_chars: int) -> None:
        self.max_length = max_length
        self.max_chars = max_chars
        self._plain = Tokenizer.from_file(str(tokenizer_file))
        self._plain.no_padding()
        self._plain.no_truncation()
        # One pre-configured tokenizer per direction: enable_truncation mutates the tokenizer, which
        # threads share, so it is never reconfigured per call.
        self._truncating: dict[Direction, Tokenizer] = {}
        for direction in ("right", "left"):
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length, strategy="longest_first", direction=direction)
            self._truncating[direction] = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (added tokens included)."""
        return int(self._plain.get_vocab_size(with_added_tokens=True))

    def check(self, texts: Sequence[str], pairs: Sequence[str], prompt: str = "") -> None:
        """Reject empty or over-long texts (and prompts) before spending any tokenizer time on them."""
        if pairs and len(pairs) != len(texts):
            raise InvalidInput(
                f"text_pairs has {len(pairs)} entries; it must be empty or match the {len(texts)} inputs"
            )
        if len(prompt) > self.max_chars:
            raise InvalidInput(f"prompt has {len(prompt)} characters; the limit is {self.max_chars}")
        for field, values in (("inputs", texts), ("text_pairs", pairs)):
            for index, text in enumerate(values):
                if not text:
                    raise InvalidInput(f"{field}[{index}] is empty")
                if len(text) > self.max_chars:
                    raise InvalidInput(
                        f"{field}[{index}] has {len(text)} characters; the limit is {self.max_chars}"
                    )

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] = (), *, truncate: bool, add_special_tokens: bool = True,
        direction: Direction = "right", prompt: str = "",
    ) -> list[Encoding]:
        """Tokenize `prompt + text` for each text (as sentence-transformers does: the prompt's tokens count
        and offsets index into the joined string); without `truncate` an input longer than the model's
        limit is an error, with it `direction` says which end goes (left may cut the prompt, as in TEI)."""
        self.check(texts, pairs, prompt)
        return self._encode_checked(texts, pairs, truncate, add_special_tokens, direction, prompt)

    def _encode_checked(
        self, texts: Sequence[str], pairs: Sequence[str], truncate: bool, add_special_tokens: bool,
        direction: Direction = "right", prompt: str = "",
    ) -> list[Encoding]:
        """`encode` for texts that already passed `check`."""
        tokenizer = self._truncating[direction] if truncate else self._plain
        if prompt:
            texts = [prompt + text for text in texts]
        if len(texts) <= SEQUENTIAL_INPUTS:
            # encode_batch fans out to a thread pool; for a few short texts that costs ~10x the work.
            second: Sequence[str | None] = pairs or [None] * len(texts)
            encodings = [
                tokenizer.encode(text, pair, add_special_tokens=add_special_tokens)
                for text, pair in zip(texts, second, strict=True)
            ]
        else:
            batch: list[str] | list[tuple[str, str]] = (
                list(zip(texts, pairs, strict=True)) if pairs else list(texts)
            )
            encodings = tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens)
        if not truncate:
            for index, encoding in enumerate(encodings):
                if len(encoding.ids) > self.max_length:
                    raise InputTooLong(
                        f"inputs[{index}] is {len(encoding.ids)} tokens long; the model accepts at most "
                        f"{self.max_length}. Shorten it or set truncate=true"
                    )
        return encodings

    async def encode_async(
        self, texts: Sequence[str], pairs: Sequence[str] = (), *, truncate: bool, add_special_tokens: bool = True,
        direction: Direction = "right", prompt: str = "",
    ) -> list[Encoding]:
        """`encode`, moved off the event loop when the request is large enough for that to pay."""
        # Limits first, on the loop: a multi-megabyte input is refused without a thread hop.
        self.check(texts, pairs, prompt)
        chars = sum(map(len, texts)) + sum(map(len, pairs)) + len(prompt) * len(texts)
        if chars <= INLINE_CHARS:
            return self._encode_checked(texts, pairs, truncate, add_special_tokens, direction, prompt)
        return await asyncio.to_thread(
            self._encode_checked, texts, pairs, truncate, add_special_tokens, direction, prompt
        )


def to_rows(encodings: Sequence[Encoding]) -> list[Row]:
    """Model rows (int64 ids and token types) from tokenizer encodings."""
    return [
        Row(ids=np.asarray(e.ids, dtype=np.int64), type_ids=np.asarray(e.type_ids, dtype=np.int64))
        for e in encodings
    ]


def id_rows(arrays: Sequence[Sequence[int]], max_length: int, vocab_size: int, field: str = "input") -> list[Row]:
    """Model rows from token-id arrays taken exactly as sent: the model's own ids, special tokens included
    (nothing is added, nothing is cut); every id must be in the vocabulary and no array longer than
    `max_length`. Token type ids are all 0. `field` names the arrays in error messages."""
    rows = []
    for index, ids in enumerate(arrays):
        if not ids:
            raise InvalidInput(f"{field}[{index}] is an empty token array")
        if len(ids) > max_length:
            raise InputTooLong(
                f"{field}[{index}] is {len(ids)} tokens long; the model accepts at most {max_length} "
                "(token arrays are never truncated)"
            )
        try:
            array = np.asarray(ids, dtype=np.int64)
        except (OverflowError, TypeError, ValueError):
            raise InvalidInput(f"{field}[{index}] must be a list of integer token ids") from None
        if array.ndim != 1:
            raise InvalidInput(f"{field}[{index}] must be a flat list of integer token ids")
        outside = (array < 0) | (array >= vocab_size)
        if outside.any():
            bad = int(array[int(outside.argmax())])
            raise InvalidInput(
                f"{field}[{index}] has token id {bad}; ids must be in [0, {vocab_size}) for this model's vocabulary"
            )
        rows.append(Row(ids=array, type_ids=np.zeros_like(array)))
    return rows
