"""Server-side tokenization with the Rust `tokenizers` library, checked against the model's limits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from millibatch.batching.work import Row
from millibatch.errors import InputTooLong, InvalidInput

#: Below this many characters in a request, tokenizing inline is cheaper than a thread hop.
INLINE_CHARS = 4096
#: Up to this many inputs, encode one by one rather than through the tokenizer's thread pool.
SEQUENTIAL_INPUTS = 8


class TextEncoder:
    """Turns texts (and optional second texts of pairs) into model rows."""

    def __init__(self, tokenizer_file: Path, max_length: int, max_chars: int) -> None:
        self.max_length = max_length
        self.max_chars = max_chars
        self._plain = Tokenizer.from_file(str(tokenizer_file))
        self._plain.no_padding()
        self._plain.no_truncation()
        self._truncating = Tokenizer.from_file(str(tokenizer_file))
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_length, strategy="longest_first")

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (added tokens included)."""
        return int(self._plain.get_vocab_size(with_added_tokens=True))

    def check(self, texts: Sequence[str], pairs: Sequence[str]) -> None:
        """Reject empty or over-long texts before spending any tokenizer time on them."""
        if pairs and len(pairs) != len(texts):
            raise InvalidInput(
                f"text_pairs has {len(pairs)} entries; it must be empty or match the {len(texts)} inputs"
            )
        for field, values in (("inputs", texts), ("text_pairs", pairs)):
            for index, text in enumerate(values):
                if not text:
                    raise InvalidInput(f"{field}[{index}] is empty")
                if len(text) > self.max_chars:
                    raise InvalidInput(
                        f"{field}[{index}] has {len(text)} characters; the limit is {self.max_chars}"
                    )

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] = (), *, truncate: bool, add_special_tokens: bool = True
    ) -> list[Encoding]:
        """Tokenize; without `truncate` an input longer than the model's limit is an error."""
        self.check(texts, pairs)
        return self._encode_checked(texts, pairs, truncate, add_special_tokens)

    def _encode_checked(
        self, texts: Sequence[str], pairs: Sequence[str], truncate: bool, add_special_tokens: bool
    ) -> list[Encoding]:
        """`encode` for texts that already passed `check`."""
        tokenizer = self._truncating if truncate else self._plain
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
        self, texts: Sequence[str], pairs: Sequence[str] = (), *, truncate: bool, add_special_tokens: bool = True
    ) -> list[Encoding]:
        """`encode`, moved off the event loop when the request is large enough for that to pay."""
        # Limits first, on the loop: a multi-megabyte input is refused without a thread hop.
        self.check(texts, pairs)
        chars = sum(map(len, texts)) + sum(map(len, pairs))
        if chars <= INLINE_CHARS:
            return self._encode_checked(texts, pairs, truncate, add_special_tokens)
        return await asyncio.to_thread(self._encode_checked, texts, pairs, truncate, add_special_tokens)


def to_rows(encodings: Sequence[Encoding]) -> list[Row]:
    """Model rows (int64 ids and token types) from tokenizer encodings."""
    return [
        Row(ids=np.asarray(e.ids, dtype=np.int64), type_ids=np.asarray(e.type_ids, dtype=np.int64))
        for e in encodings
    ]
