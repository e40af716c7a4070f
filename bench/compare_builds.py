"""Two builds of the server side by side: the same loads on each, alternating, reported in pairs.

    .venv/bin/python bench/compare_builds.py BASE_REF [NEW_REF] [--pairs 2] [--rate 365]

Each ref is checked out into a temporary git worktree (sharing this checkout's .venv and models), and
each pair runs build A, then build B, on the same load: a saturation run (64 calls in flight, no
deadline) and an open-loop run at --rate calls/s with a 100 ms deadline (about twice the default
model's capacity on 2 cores). The load generator is this checkout's, the same for both. On a shared
machine whose speed drifts by ±20% over minutes, the paired ratio is what to read, not the levels.
NEW_REF defaults to the working tree as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.deadline_batching import (  # noqa: E402
    POLICIES,
    SATURATION_IN_FLIGHT,
    millibatch_server,
    run_load,
    summarise,
    workload,
)
from bench.processes import remove_worktree, running_server, worktree  # noqa: E402
from bench.stats import median  # noqa: E402

SECONDS = 15.0
DEADLINE = 0.1


def measure(repo: Path, model: Path, texts_file: Path, rate: float) -> dict[str, float]:
    """Saturation req/s and deadline goodput at `rate` of the build in `repo`."""
    with running_server(millibatch_server(model, POLICIES["deadline-aware"], instances=0, repo=repo),
                        texts_file) as server:
        run_load(server, texts_file, texts_file.with_name("warm.json"), "closed", 3, 30, concurrency=16)
        saturated = run_load(server, texts_file, texts_file.with_name("saturation.json"), "closed", SECONDS, 30,
                             concurrency=SATURATION_IN_FLIGHT)
        overload = run_load(server, texts_file, texts_file.with_name("overload.json"), "open", SECONDS, DEADLINE,
                            rate=rate, seed=200)
    return {"saturation_rps": float(summarise(saturated, SECONDS)["goodput_rps"]),
            "overload_goodput_rps": float(summarise(overload, SECONDS)["goodput_rps"])}


def main() -> int:
    """Measure both builds in alternating pairs and print each pair and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("new", nargs="?", default=None, help="default: this working tree")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=365.0, help="open-loop calls/s of the overload run")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    args = parser.parse_args()
    from bench.run import ensure_model

    model = ensure_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts_file = root / "texts.json"
        texts_file.write_text(json.dumps(workload()))
        builds = {args.base: worktree(args.base, root),
                  args.new or "working tree": worktree(args.new, root) if args.new else REPO}
        try:
            pairs = []
            for pair in range(args.pairs):
                results = {name: measure(repo, model, texts_file, args.rate) for name, repo in builds.items()}
                pairs.append(results)
                print(f"pair {pair + 1}: {json.dumps(results)}", flush=True)
        finally:
            for repo in builds.values():
                if repo != REPO:
                    remove_worktree(repo)
    base, new = builds
    for metric in ("saturation_rps", "overload_goodput_rps"):
        ratios = [p[new][metric] / p[base][metric] for p in pairs]
        print(f"{metric}: {new} / {base} = " + ", ".join(f"{r:.2f}" for r in ratios)
              + f" (median {median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
