"""bench/vector_encodings.py builds and parses the same vectors in every encoding it times."""

from __future__ import annotations

import numpy as np

from bench.vector_encodings import VARIANTS, build, parse


def test_every_variant_round_trips_through_the_wire() -> None:
    vectors = np.random.default_rng(0).standard_normal((4, 13)).astype(np.float32)
    for encoding in VARIANTS:
        decoded = parse(build(vectors, encoding), encoding)
        assert decoded.shape == (4, 13), encoding
        if encoding == "binary":
            np.testing.assert_array_equal(decoded, vectors > 0)
        else:
            np.testing.assert_allclose(decoded, vectors, atol=np.abs(vectors).max() / 127)
