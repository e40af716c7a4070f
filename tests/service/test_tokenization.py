"""TextEncoder: truncation direction and prompts, checked against the checkpoint's own Hugging Face tokenizer
(the one sentence-transformers calls on its prompt + text strings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from millibatch.errors import InputTooLong, InvalidInput
from millibatch.service.tokenization import INLINE_CHARS, TextEncoder, to_rows
from tests.helpers import minilm_source

MAX_LENGTH = 16
LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen end"
PROMPT = "query: "


@pytest.fixture(scope="module")
def encoder(tiny_embed_dir: Path) -> TextEncoder:
    return TextEncoder(tiny_embed_dir / "tokenizer.json", MAX_LENGTH, max_chars=1000)


@pytest.fixture(scope="module")
def plain(tiny_embed_dir: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(tiny_embed_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    return tokenizer


def test_left_truncation_keeps_the_end_of_a_long_input(encoder: TextEncoder, plain: Tokenizer) -> None:
    full = plain.encode(LONG).ids
    assert len(full) > MAX_LENGTH
    cls, body, sep = full[0], full[1:-1], full[-1]
    [left] = encoder.encode([LONG], truncate=True, direction="left")
    assert left.ids == [cls, *body[-(MAX_LENGTH - 2) :], sep]
    assert left.tokens[-2] == "end"
    [right] = encoder.encode([LONG], truncate=True)  # the default is unchanged: keep the start
    assert right.ids == [cls, *body[: MAX_LENGTH - 2], sep]
    assert encoder.encode([LONG], truncate=True, direction="right")[0].ids == right.ids


def test_left_truncation_without_truncate_is_still_an_error(encoder: TextEncoder) -> None:
    with pytest.raises(InputTooLong, match="at most 16"):
        encoder.encode([LONG], truncate=False, direction="left")


def test_both_directions_on_the_batched_path(encoder: TextEncoder) -> None:
    texts = [LONG] * 9 + ["short"]  # past SEQUENTIAL_INPUTS: encode_batch
    lefts = encoder.encode(texts, truncate=True, direction="left")
    rights = encoder.encode(texts, truncate=True)
    assert {e.tokens[-2] for e in lefts[:9]} == {"end"} and {e.tokens[1] for e in rights[:9]} == {"one"}
    assert lefts[9].ids == rights[9].ids


def test_a_prompt_gives_the_ids_of_the_joined_string(encoder: TextEncoder) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_source()))
    texts = ["A man is playing a guitar.", "ok"]
    encodings = encoder.encode(texts, truncate=False, prompt=PROMPT)
    assert [e.ids for e in encodings] == reference([PROMPT + t for t in texts])["input_ids"]
    assert encodings[0].tokens[1:3] == ["query", ":"]


def test_usage_counts_include_the_prompt_tokens(encoder: TextEncoder, plain: Tokenizer) -> None:
    prompt_tokens = len(plain.encode(PROMPT, add_special_tokens=False).ids)
    without = to_rows(encoder.encode(["hello world"], truncate=False))
    with_prompt = to_rows(encoder.encode(["hello world"], truncate=False, prompt=PROMPT))
    assert with_prompt[0].length == without[0].length + prompt_tokens == without[0].length + 2


def test_a_prompt_counts_towards_the_length_limit(encoder: TextEncoder) -> None:
    fits = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    assert len(encoder.encode([fits], truncate=False)[0].ids) == MAX_LENGTH
    with pytest.raises(InputTooLong, match="18 tokens long"):
        encoder.encode([fits], truncate=False, prompt=PROMPT)
    # Left truncation is plain truncation of the joined text (as in TEI): a long input loses the prompt.
    [cut] = encoder.encode([fits], truncate=True, direction="left", prompt=PROMPT)
    assert "query" not in cut.tokens and cut.tokens[-2] == "fourteen"
    [kept] = encoder.encode([fits], truncate=True, prompt=PROMPT)
    assert kept.tokens[1:3] == ["query", ":"]


def test_an_over_long_prompt_is_refused_before_tokenizing(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidInput, match="prompt has 1001 characters; the limit is 1000"):
        encoder.encode(["hi"], truncate=True, prompt="x" * 1001)


async def test_encode_async_matches_encode_inline_and_in_a_thread(encoder: TextEncoder) -> None:
    small = ["hello world", LONG]
    large = [LONG] * (INLINE_CHARS // len(LONG) + 1)  # past INLINE_CHARS: a thread hop
    for texts in (small, large):
        expected = [e.ids for e in encoder.encode(texts, truncate=True, direction="left", prompt=PROMPT)]
        got = await encoder.encode_async(texts, truncate=True, direction="left", prompt=PROMPT)
        assert [e.ids for e in got] == expected
