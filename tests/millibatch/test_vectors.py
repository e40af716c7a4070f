"""millibatch.vectors: the packed byte layouts of VectorEncoding and Matryoshka truncation."""

from __future__ import annotations

import numpy as np
import pytest

from millibatch.vectors import ENCODINGS, Encoding, pack, packed_size, truncate_dimensions, unpack, unpack_rows


def random_vectors(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dims)).astype(np.float32)


@pytest.mark.parametrize("dims", [1, 7, 8, 13, 384])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_vector_takes_its_documented_size(encoding: Encoding, dims: int) -> None:
    packed = pack(random_vectors(3, dims), encoding)
    assert len(packed) == 3
    expected = {"float32": 4 * dims, "float16": 2 * dims, "int8": dims, "binary": (dims + 7) // 8}[encoding]
    assert {len(data) for data, _ in packed} == {expected} == {packed_size(encoding, dims)}


@pytest.mark.parametrize("dims", [5, 384])
def test_float32_round_trips_exactly_and_float16_to_half_precision(dims: int) -> None:
    vectors = random_vectors(4, dims)
    packed = pack(vectors, "float32")
    assert packed[0][0] == vectors[0].astype("<f4").tobytes()  # little-endian, as documented
    np.testing.assert_array_equal(unpack_rows([p for p, _ in packed], [s for _, s in packed], "float32"), vectors)
    halves = pack(vectors, "float16")
    assert halves[1][0] == vectors[1].astype("<f2").tobytes()
    decoded = unpack_rows([p for p, _ in halves], [], "float16", dims)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vectors.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dims", [3, 384])
def test_int8_error_is_at_most_half_a_step_and_the_peak_maps_to_127(dims: int) -> None:
    vectors = random_vectors(16, dims, seed=1) * np.float32(0.3)
    packed = pack(vectors, "int8")
    for row, (data, scale) in zip(vectors, packed, strict=True):
        q = np.frombuffer(data, dtype=np.int8)
        assert scale == pytest.approx(np.abs(row).max() / 127, rel=1e-6)
        assert np.abs(q).max() == 127 and q.min() >= -127
        assert np.abs(unpack(data, scale, "int8") - row).max() <= scale / 2 * (1 + 1e-5)
        # Round to nearest: the same as the reference computed in float64.
        np.testing.assert_array_equal(q, np.clip(np.rint(row / np.float32(scale)), -127, 127))


def test_int8_keeps_the_sign_of_a_negative_peak_and_a_zero_vector_stays_zero() -> None:
    vectors = np.array([[-2.54, 1.0, 0.1], [0.0, 0.0, 0.0]], dtype=np.float32)
    (first, first_scale), (zero, zero_scale) = pack(vectors, "int8")
    assert first_scale == pytest.approx(0.02)
    assert np.frombuffer(first, dtype=np.int8).tolist() == [-127, 50, 5]
    assert (zero, zero_scale) == (bytes(3), 0.0)
    np.testing.assert_array_equal(unpack(zero, zero_scale, "int8"), np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("dims", [1, 8, 13, 384])
def test_binary_is_the_sign_bit_packed_most_significant_first_like_numpy(dims: int) -> None:
    vectors = random_vectors(5, dims, seed=2)
    vectors[0, 0] = 0.0  # zero is not positive: bit 0
    packed = pack(vectors, "binary")
    expected = np.packbits(vectors > 0, axis=-1)
    for row, (data, scale) in enumerate(packed):
        assert data == expected[row].tobytes() and scale == 0.0
    bits = unpack_rows([p for p, _ in packed], [], "binary", dims)
    assert bits.dtype == np.uint8 and bits.shape == (5, dims)
    np.testing.assert_array_equal(bits, (vectors > 0).astype(np.uint8))


def test_binary_bit_order_by_hand() -> None:
    # Dimension 0 is bit 7 of byte 0; the 9th dimension starts byte 1; padding bits are 0.
    vector = np.array([[1, -1, -1, -1, -1, -1, -1, 1, 1]], dtype=np.float32)
    [(data, _)] = pack(vector, "binary")
    assert data == bytes([0b1000_0001, 0b1000_0000])


def test_binary_matches_sentence_transformers_ubinary() -> None:
    quantization = pytest.importorskip("sentence_transformers.quantization")
    vectors = random_vectors(6, 384, seed=3)
    ubinary = quantization.quantize_embeddings(vectors, precision="ubinary")
    assert [data for data, _ in pack(vectors, "binary")] == [row.tobytes() for row in ubinary]


def test_unpack_refuses_bytes_of_the_wrong_length() -> None:
    [(data, scale)] = pack(random_vectors(1, 16), "float16")
    with pytest.raises(ValueError, match="has 32 bytes; 15 dimensions of float16 take 30"):
        unpack(data, scale, "float16", 15)
    with pytest.raises(ValueError, match="need as many scales"):
        unpack_rows([data[:16]], [], "int8")
    with pytest.raises(ValueError, match="unknown encoding"):
        pack(random_vectors(1, 4), "int4")  # type: ignore[arg-type]


def test_binary_without_dims_unpacks_every_bit_of_the_bytes() -> None:
    [(data, _)] = pack(np.ones((1, 10), dtype=np.float32), "binary")
    assert unpack(data, 0.0, "binary").tolist() == [1] * 10 + [0] * 6


def test_truncation_keeps_the_prefix_and_renormalises() -> None:
    vectors = random_vectors(3, 16, seed=4)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cut = truncate_dimensions(unit, 4, normalize=True)
    assert cut.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cut, unit[:, :4] / np.linalg.norm(unit[:, :4], axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(truncate_dimensions(vectors, 4, normalize=False), vectors[:, :4])
    assert truncate_dimensions(np.zeros((1, 4)), 2, normalize=True).tolist() == [[0.0, 0.0]]
    for bad in (0, 17):
        with pytest.raises(ValueError, match="between 1 and 16"):
            truncate_dimensions(vectors, bad, normalize=True)
