"""Embedding requests, whichever door they came through: the prompt, the truncation side and the
Matryoshka size are resolved against the model before any work is spent, then the vectors are taken
from the graph output the request asks for (normalised or not) and cut to size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from millibatch.errors import InvalidInput
from millibatch.service.dataplane import Computed, DataPlane
from millibatch.service.registry import ServedModel
from millibatch.service.tokenization import Direction, id_rows
from millibatch.vectors import truncate_dimensions


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """What an embedding request may ask for besides its inputs."""

    #: Cut over-long inputs instead of refusing them.
    truncate: bool = False
    #: L2-normalise the vectors; None: the model's own default.
    normalize: bool | None = None
    #: Keep only the first `dimensions` values (Matryoshka); None: all of them.
    dimensions: int | None = None
    #: A prompt of the model by name; with neither this nor `prompt`, the model's default prompt applies.
    prompt_name: str = ""
    #: A literal prompt; "" means none, not even the model's default.
    prompt: str | None = None
    #: Which end of an over-long input truncation cuts.
    direction: Direction = "right"


@dataclass(frozen=True, slots=True)
class Embedded:
    """The vectors of an embedding request, and what the plane reports about its computation."""

    #: float32 [inputs, dimensions], in input order.
    vectors: npt.NDArray[np.float32]
    done: Computed

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return int(self.vectors.shape[1])


def dimensions_for(model: ServedModel, requested: int | None) -> int:
    """The vector length a request gets: all of the model's, or the `requested` prefix of them."""
    size = model.manifest.dimensions
    if requested is None:
        return size
    if not 1 <= requested <= size:
        raise InvalidInput(f"dimensions is {requested}; model {model.name!r} gives vectors of 1 to {size} dimensions")
    return requested


def normalizes(model: ServedModel, options: EmbedOptions) -> bool:
    """Whether the request's vectors are L2-normalised."""
    return model.manifest.normalize if options.normalize is None else options.normalize


async def embed_texts(plane: DataPlane, model: ServedModel, texts: Sequence[str], options: EmbedOptions,
                      deadline: float, prechecked: bool = False) -> Embedded:
    """One vector per text, each text after the request's prompt (whose tokens count in the usage);
    `prechecked`: the caller has already asked `plane.refusal`."""
    dimensions = dimensions_for(model, options.dimensions)
    prompt = model.manifest.prompt_text(options.prompt_name, options.prompt)
    done = await plane.compute_texts(model, texts, truncate=options.truncate, deadline=deadline,
                                     direction=options.direction, prompt=prompt, prechecked=prechecked)
    return Embedded(vectors(done, dimensions, normalizes(model, options)), done)


async def embed_ids(plane: DataPlane, model: ServedModel, arrays: Sequence[Sequence[int]], options: EmbedOptions,
                    deadline: float, field: str = "input") -> Embedded:
    """One vector per token-id array, taken exactly as sent (see tokenization.id_rows): no prompt, no
    special tokens added, never truncated."""
    dimensions = dimensions_for(model, options.dimensions)
    if options.prompt_name or options.prompt:
        raise InvalidInput("prompts apply to text inputs; token arrays are embedded exactly as sent")
    plane.check_count(len(arrays))
    rows = id_rows(arrays, model.encoder.max_length, model.encoder.vocab_size, field)
    done = await plane.compute_rows(model, rows, deadline)
    return Embedded(vectors(done, dimensions, normalizes(model, options)), done)


def vectors(done: Computed, dimensions: int, normalize: bool) -> npt.NDArray[np.float32]:
    """The request's vectors [inputs, dimensions]: the graph's normalised or pooled output, cut to
    `dimensions` and normalised again when the vectors are normalised (a unit vector cut short is not)."""
    output = "embeddings" if normalize else "pooled"
    stacked = np.stack([r.get(output) for r in done.results]).astype(np.float32, copy=False)
    if dimensions < stacked.shape[1]:
        return truncate_dimensions(stacked, dimensions, normalize)
    return stacked
