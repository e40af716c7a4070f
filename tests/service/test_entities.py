"""Entity aggregation on hand-made probabilities, on a real tokenizer's offsets, and against the
transformers pipeline's own aggregation code on random cases."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millibatch.service.entities import STRATEGIES, Entity, Strategy, extract_entities

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

# "Angela Merkel flew to Paris": [CLS] angela mer ##kel flew to paris [SEP]
TEXT = "Angela Merkel flew to Paris"
OFFSETS = [(0, 0), (0, 6), (7, 10), (10, 13), (14, 18), (19, 21), (22, 27), (0, 0)]
WORD_IDS = [None, 0, 1, 1, 2, 3, 4, None]
SPECIAL = [1, 0, 0, 0, 0, 0, 0, 1]


def confident(label: str, p: float) -> list[float]:
    """A probability row giving `p` to `label` and the rest evenly to the others."""
    rest = (1 - p) / (len(LABELS) - 1)
    return [p if name == label else rest for name in LABELS]


# The special tokens say LOC with certainty: they must not leak into the answer.
PROBS = np.array([
    confident("B-LOC", 0.99),  # [CLS]
    confident("B-PER", 0.9),   # angela
    confident("I-PER", 0.6),   # mer
    confident("I-LOC", 0.9),   # ##kel: disagrees with its word's first piece
    confident("O", 0.8),       # flew
    confident("O", 0.7),       # to
    confident("B-LOC", 0.6),   # paris
    confident("B-LOC", 0.99),  # [SEP]
], dtype=np.float32)

# average over "Merkel": I-PER (0.6 + 0.025) / 2 = 0.3125 < I-LOC (0.1 + 0.9) / 2 = 0.5.
EXPECTED: dict[Strategy, list[tuple[str, float, int, int]]] = {
    "none": [("B-PER", 0.9, 0, 6), ("I-PER", 0.6, 7, 10), ("I-LOC", 0.9, 10, 13), ("B-LOC", 0.6, 22, 27)],
    "simple": [("PER", 0.75, 0, 10), ("LOC", 0.9, 10, 13), ("LOC", 0.6, 22, 27)],
    "first": [("PER", 0.75, 0, 13), ("LOC", 0.6, 22, 27)],
    "max": [("PER", 0.9, 0, 6), ("LOC", 0.9, 7, 13), ("LOC", 0.6, 22, 27)],
    "average": [("PER", 0.9, 0, 6), ("LOC", 0.5, 7, 13), ("LOC", 0.6, 22, 27)],
}


def entities(strategy: Strategy, probs: np.ndarray = PROBS, **kwargs: Any) -> list[Entity]:
    return extract_entities(TEXT, probs, LABELS, offsets=OFFSETS, word_ids=WORD_IDS, special_tokens_mask=SPECIAL,
                            strategy=strategy, **kwargs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_on_a_word_whose_pieces_disagree(strategy: Strategy) -> None:
    found = entities(strategy)
    assert [(e.label, e.start, e.end) for e in found] == [(label, s, t) for label, _, s, t in EXPECTED[strategy]]
    np.testing.assert_allclose([e.score for e in found], [score for _, score, _, _ in EXPECTED[strategy]], atol=1e-6)
    assert all(e.text == TEXT[e.start : e.end] for e in found)


def test_b_tags_split_and_a_type_change_splits_while_i_after_o_starts_an_entity() -> None:
    probs = PROBS.copy()
    probs[1:7] = [confident("B-PER", 0.9), confident("B-PER", 0.8), confident("I-PER", 0.7),
                  confident("O", 0.9), confident("I-LOC", 0.6), confident("I-LOC", 0.5)]
    found = entities("simple", probs)
    assert [(e.label, e.text) for e in found] == [("PER", "Angela"), ("PER", "Merkel"), ("LOC", "to Paris")]
    assert found[1].score == pytest.approx(0.75)


def test_ignore_labels_default_drops_o_and_empty_keeps_everything() -> None:
    assert "O" not in {e.label for e in entities("simple")}
    everything = entities("simple", ignore_labels=())
    assert [(e.label, e.text) for e in everything] == [
        ("PER", "Angela Mer"), ("LOC", "kel"), ("O", "flew to"), ("LOC", "Paris")
    ]
    assert [e.text for e in entities("simple", ignore_labels=["O", "LOC"])] == ["Angela Mer"]
    # "none" compares the token's full label.
    assert [e.label for e in entities("none", ignore_labels=["O", "I-PER", "I-LOC"])] == ["B-PER", "B-LOC"]


def test_all_special_tokens_give_no_entities() -> None:
    found = extract_entities("", PROBS[[0, 7]], LABELS, offsets=[(0, 0), (0, 0)], word_ids=[None, None],
                             special_tokens_mask=[1, 1])
    assert found == []


def test_mismatched_shapes_and_unknown_strategy_are_errors() -> None:
    with pytest.raises(ValueError, match="do not match"):
        entities("simple", np.vstack([PROBS, PROBS[:1]]))  # padded past the row's tokens
    with pytest.raises(ValueError, match="do not match"):
        entities("simple", PROBS[:, :3])
    with pytest.raises(ValueError, match="unknown aggregation strategy"):
        entities("longest")  # type: ignore[arg-type]


def test_real_tokenizer_offsets_index_the_original_non_ascii_string() -> None:
    from tokenizers import Tokenizer

    from tests.helpers import minilm_source

    tokenizer = Tokenizer.from_file(str(minilm_source() / "tokenizer.json"))
    tokenizer.no_padding()
    # Cyrillic pieces, CJK, an emoji outside the BMP ([UNK]), and a decomposed accent inside a word:
    # the normaliser drops it, so "renee" spans 6 characters and transformers' length heuristic would
    # glue the word to "Madame" for first/average/max; the tokenizer's word ids keep them apart.
    text = "Москва 東京 🙂 Madame Rene\u0301e"
    encoding = tokenizer.encode(text)
    count = len(encoding.ids)
    probs = np.tile(np.array(confident("B-LOC", 0.9), dtype=np.float32), (count, 1))
    found = extract_entities(text, probs, LABELS, offsets=encoding.offsets, word_ids=encoding.word_ids,
                             special_tokens_mask=encoding.special_tokens_mask, strategy="first")
    assert [e.text for e in found] == ["Москва", "東", "京", "🙂", "Madame", "Rene\u0301e"]
    pieces = extract_entities(text, probs, LABELS, offsets=encoding.offsets, word_ids=encoding.word_ids,
                              special_tokens_mask=encoding.special_tokens_mask, strategy="none")
    assert len(pieces) == count - 2 > len(found)  # Москва is several pieces
    assert "".join(e.text for e in pieces) == text.replace(" ", "")


def transformers_aggregator(labels: list[str]) -> Any:
    """transformers' TokenClassificationPipeline with only what its aggregation code reads."""
    pytest.importorskip("transformers")
    from transformers.pipelines.token_classification import TokenClassificationPipeline

    pipe = object.__new__(TokenClassificationPipeline)
    pipe.model = types.SimpleNamespace(config=types.SimpleNamespace(id2label=dict(enumerate(labels))))
    pipe.tokenizer = types.SimpleNamespace(convert_tokens_to_string=" ".join)
    return pipe


# Prefix-less and BIOES-style labels too: transformers treats both as continuing their own type.
RANDOM_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC", "E-PER"]


@settings(max_examples=150, deadline=None)
@given(words=st.lists(st.integers(1, 4), min_size=1, max_size=10), seed=st.integers(0, 2**32 - 1),
       strategy=st.sampled_from(STRATEGIES), sharpness=st.floats(0.5, 6.0))
def test_matches_transformers_aggregation_on_random_cases(
    words: list[int], seed: int, strategy: Strategy, sharpness: float
) -> None:
    aggregator = transformers_aggregator(RANDOM_LABELS)
    from transformers.pipelines.token_classification import AggregationStrategy

    rng = np.random.default_rng(seed)
    # [CLS] w0p0 w0p1 w1p0 ... [SEP]; each piece is 2 characters, words separated by a space.
    word_ids: list[int | None] = [None]
    offsets = [(0, 0)]
    position = 0
    for word, pieces in enumerate(words):
        for _ in range(pieces):
            word_ids.append(word)
            offsets.append((position, position + 2))
            position += 2
        position += 1
    word_ids.append(None)
    offsets.append((0, 0))
    text = "x" * position
    logits = rng.normal(size=(len(offsets), len(RANDOM_LABELS))) * sharpness
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = probs.astype(np.float32)
    special = [1] + [0] * (len(offsets) - 2) + [1]

    ours = extract_entities(text, probs, RANDOM_LABELS, offsets=offsets, word_ids=word_ids,
                            special_tokens_mask=special, strategy=strategy)
    pre_entities = [
        {"word": f"t{i}", "scores": probs[i], "start": offsets[i][0], "end": offsets[i][1], "index": i,
         "is_subword": word_ids[i] == word_ids[i - 1]}
        for i in range(1, len(offsets) - 1)
    ]
    theirs = aggregator.aggregate(pre_entities, AggregationStrategy(strategy))
    key = "entity" if strategy == "none" else "entity_group"
    theirs = [e for e in theirs if e[key] != "O"]
    assert [(e.label, e.start, e.end) for e in ours] == [(e[key], e["start"], e["end"]) for e in theirs]
    np.testing.assert_allclose([e.score for e in ours], [float(e["score"]) for e in theirs], rtol=1e-5)
