"""What building an Embed response's float vectors costs: message by message from Python floats, or as
wire bytes (service/vector_wire.py, what Embed does).

    .venv/bin/python -m bench.response_build                  # 1, 8 and 64 rows of 384 and 1024 floats
    .venv/bin/python -m bench.response_build --rounds 5

Each way builds the response and serializes it, as gRPC does before sending it; the best of five
repeats per round, then the median over rounds. `--cold` writes 8 MB before each build (untimed) and
times each build alone, as a call meets the caches beside a busy engine: then the median per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.stats import publish, stamp
from millibatch.service.vector_wire import embeddings_field
from millibatch.v1 import inference_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "response_build"
SHAPES = ((1, 384), (8, 384), (64, 384), (1, 1024), (64, 1024))


def from_floats(vectors: npt.NDArray[np.float32]) -> bytes:
    """The response built message by message, one Python float per value (Embed before vector_wire)."""
    return pb.EmbedResponse(embeddings=[pb.Embedding(values=row) for row in vectors.tolist()]).SerializeToString()


def from_wire(vectors: npt.NDArray[np.float32]) -> bytes:
    """The response with its vectors merged in as wire bytes (Embed now)."""
    response = pb.EmbedResponse()
    response.MergeFromString(embeddings_field(vectors))
    return response.SerializeToString()


def seconds(build: Callable[[npt.NDArray[np.float32]], bytes], vectors: npt.NDArray[np.float32],
            number: int = 0) -> float:
    """Best of five repeats of building the response for `vectors`, `number` times each (0: about 20 000
    rows' worth)."""
    number = number or max(20, 20_000 // vectors.shape[0])
    return min(timeit.repeat(lambda: build(vectors), number=number, repeat=5)) / number


#: Written before each build with --cold: more than this machine's L2 and much of its L3.
FLUSH_BYTES = 8 << 20


def cold_seconds(build: Callable[[npt.NDArray[np.float32]], bytes], vectors: npt.NDArray[np.float32],
                 number: int = 0) -> float:
    """Median CPU time of one build of the response for `vectors` right after 8 MB were written."""
    flush = np.ones(FLUSH_BYTES, dtype=np.uint8)
    times = []
    for _ in range(number or 500):
        flush += 1
        started = time.thread_time_ns()
        build(vectors)
        times.append(time.thread_time_ns() - started)
    return statistics.median(times) / 1e9


def shape(text: str) -> tuple[int, int]:
    """ROWSxFLOATS, e.g. 64x384."""
    rows, _, dims = text.partition("x")
    return int(rows), int(dims)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.response_build", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", type=shape, nargs="+", default=list(SHAPES), help="ROWSxFLOATS ...")
    parser.add_argument("--number", type=int, default=0,
                        help="builds per repeat (0: about 20 000 rows' worth; with --cold, 500)")
    parser.add_argument("--cold", action="store_true", help="caches flushed before each build")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    when = stamp()
    rng = np.random.default_rng(0)
    rows = []
    for rows_and_dims in args.shapes:
        vectors = rng.standard_normal(rows_and_dims).astype(np.float32)
        assert from_floats(vectors) == from_wire(vectors), "the two ways must give the same bytes"
        floats, wire = [], []
        timer = cold_seconds if args.cold else seconds
        for _ in range(args.rounds):  # alternating, so the machine's drift falls on both
            floats.append(timer(from_floats, vectors, args.number))
            wire.append(timer(from_wire, vectors, args.number))
        rows.append({"rows": rows_and_dims[0], "dims": rows_and_dims[1], "floats_us": statistics.median(floats) * 1e6,
                     "wire_us": statistics.median(wire) * 1e6})
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench.response_build", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# Building an Embed response ({when.date_utc} UTC, commit {when.commit}, {when.cpu}, "
             f"{when.cores} cores)", "",
             f"`.venv/bin/{command}`: build and serialize; medians of the rounds' "
             + ("medians, each build after 8 MB were written." if args.cold else "best of five."), "",
             "| rows × floats | message by message from floats, µs | as wire bytes, µs | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['rows']} × {r['dims']} | {r['floats_us']:.1f} | {r['wire_us']:.1f} | "
              f"{r['floats_us'] / r['wire_us']:.1f}× |" for r in rows]
    publish(args.out, {"rounds": args.rounds, "cold": args.cold, "shapes": rows}, lines, when)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
