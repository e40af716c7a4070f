"""What packed vectors save: an EmbedResponse of 256 inputs x 384 dimensions as `repeated float` versus
each VectorEncoding, built and serialized as the server would, then parsed and decoded to numpy as the
client would; interleaved in one run, medians.

    .venv/bin/python bench/vector_encodings.py [--rows 256] [--dims 384] [--calls 50]

Times are for one whole response on one core (protobuf's upb backend); on a shared machine they are
indicative, the byte counts exact.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import interleaved, write_table  # noqa: E402
from millibatch.engines.convert.quick_bench import machine  # noqa: E402
from millibatch.v1 import inference_pb2 as pb  # noqa: E402
from millibatch.vectors import ENCODINGS, Encoding, pack, unpack_rows  # noqa: E402

#: The table's rows: None is today's `repeated float values`.
VARIANTS: tuple[Encoding | None, ...] = (None, *ENCODINGS)


def build(vectors: np.ndarray, encoding: Encoding | None) -> bytes:
    """Server side: rows → EmbedResponse → wire bytes."""
    if encoding is None:
        embeddings = [pb.Embedding(values=v) for v in vectors.tolist()]
    else:
        embeddings = [pb.Embedding(packed=data, scale=scale) for data, scale in pack(vectors, encoding)]
    response = pb.EmbedResponse(embeddings=embeddings, model="bench", dimensions=vectors.shape[1])
    return bytes(response.SerializeToString())


def parse(wire: bytes, encoding: Encoding | None) -> np.ndarray:
    """Client side: wire bytes → EmbedResponse → a [rows, dims] numpy array."""
    response = pb.EmbedResponse.FromString(wire)
    if encoding is None:
        return np.array([e.values for e in response.embeddings], dtype=np.float32)
    return unpack_rows([e.packed for e in response.embeddings], [e.scale for e in response.embeddings], encoding,
                       response.dimensions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vector_encodings.md")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, args.dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    wires = {encoding: build(vectors, encoding) for encoding in VARIANTS}
    runs: dict[tuple[str, Encoding | None], Callable[[], Any]] = {}
    for encoding in VARIANTS:
        runs["build", encoding] = partial(build, vectors, encoding)
        runs["parse", encoding] = partial(parse, wires[encoding], encoding)
    times = interleaved(runs, args.calls)

    def ms(step: str, encoding: Encoding | None) -> float:
        return statistics.median(times[step, encoding]) * 1000

    base_bytes, base_total = len(wires[None]), ms("build", None) + ms("parse", None)
    table = []
    for encoding in VARIANTS:
        built, parsed = ms("build", encoding), ms("parse", encoding)
        table.append([encoding or "repeated float", f"{len(wires[encoding]):,}",
                      f"{len(wires[encoding]) / base_bytes:.3f}", f"{built:.3f}", f"{parsed:.3f}",
                      f"{built + parsed:.3f}", f"{base_total / (built + parsed):.1f}x"])
    write_table(args.out, f"{machine()}; EmbedResponse of {args.rows} x {args.dims} unit vectors, median of "
                f"{args.calls} interleaved calls; build = pack + SerializeToString, parse = FromString + decode "
                "to numpy (`bench/vector_encodings.py`). A shared, busy machine: times are indicative.",
                ["encoding", "bytes", "size ratio", "build ms", "parse ms", "total ms", "speed-up"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
