"""Admission's feedback over time under Poisson load: its slack and wait correction, and the calls it shed
and refused, read from the server's metrics every 100 ms.

    .venv/bin/python -m bench.admission_trace --rate 115 --duration 30 --rounds 2 --baseline f4f7099

`millibatch serve` on the first core, the load generator on the others (its own process: Poisson
arrivals, one STS-B sentence per Embed call, a 100 ms deadline on every call). With `--baseline REF`
the same runs from a checkout of REF too, the builds alternating in each round. Per run: goodput, the
client's failures by status, the server's counts of refused and shed calls, and the slack's course: its
lowest and mean value, the seconds it spent below 0.9, and how many readings found it lower than the
one before (its cuts, as far as 100 ms readings tell them apart). Every reading goes to results.json.
Use it near the peak, where the slack decides how many calls are refused that the server had time for.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.goodput import fmt, scrape
from bench.processes import (
    ROOT,
    checkouts,
    cores_for,
    cpu_ticks,
    run_loadgen,
    running_server,
    serve_launch,
    stolen_share,
)
from bench.stats import median, publish, stamp
from bench.threads import add_load_arguments, prepare_load

DEFAULT_OUT = ROOT / "bench" / "results" / "admission_trace"
#: What each reading takes from the server's metrics.
METRICS = {"slack": "millibatch_admission_slack", "correction": "millibatch_admission_wait_correction",
           "shed": "millibatch_shed_requests_total", "refused": "millibatch_rejected_requests_total"}
#: Seconds between readings.
INTERVAL = 0.1
#: A slack below this is counted as time spent cut back.
LOW_SLACK = 0.9


def course(readings: list[dict[str, float]], interval: float = INTERVAL) -> dict[str, float]:
    """The slack's course over a run's readings, and what the server refused and shed meanwhile."""
    slack = [r["slack"] for r in readings if "slack" in r]
    first, last = readings[0], readings[-1]
    return {"slack_lowest": min(slack, default=1.0), "slack_mean": sum(slack) / len(slack) if slack else 1.0,
            "seconds_below": sum(1 for s in slack if s < LOW_SLACK) * interval,
            "falls": sum(1 for before, after in itertools.pairwise(slack) if after < before - 1e-9),
            "refused": last.get("refused", 0.0) - first.get("refused", 0.0),
            "shed": last.get("shed", 0.0) - first.get("shed", 0.0)}


def measure(label: str, repo: Path, args: argparse.Namespace, texts: Path) -> dict[str, Any]:
    """One run against a fresh server from `repo`, its metrics read every INTERVAL s during the load."""
    cores = cores_for("split")
    spec = serve_launch(args.model_dir, ["--threads-per-instance", str(len(cores.server)), "--log-level", "warning"],
                        name=f"trace-{label}", metrics=True, repo=repo)
    readings: list[dict[str, float]] = []
    with running_server(spec, texts, cores) as server:
        done = threading.Event()

        def read() -> None:
            started = time.perf_counter()
            while not done.is_set():
                reading = scrape(spec.metrics_url, METRICS)
                if reading:
                    readings.append({"t": time.perf_counter() - started, **reading})
                done.wait(INTERVAL)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ticks = cpu_ticks(cores.server)
        try:
            result = run_loadgen(server.launch, cores, texts,
                                 ["--mode", "open", "--rate", str(args.rate), "--duration", str(args.duration),
                                  "--warmup", "0", "--timeout", str(args.deadline_ms / 1000),
                                  "--max-outstanding", "100000"], args.out / "raw" / f"{label}.json",
                                 args.duration + 120)
        finally:
            done.set()
            reader.join()
        stolen = stolen_share(ticks, cpu_ticks(cores.server))
    assert result is not None and readings
    return {"label": label, "goodput_rps": result["goodput_rps"], "offered_rps": result["offered_rps"],
            "errors": result["error_kinds"], "server_stolen": stolen, **course(readings), "readings": readings}


def report(runs: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> list[str]:
    lines = [f"`.venv/bin/python -m bench.admission_trace {' '.join(argv)}`: server on one core, Poisson arrivals at "
             f"{args.rate:g} calls/s, one STS-B sentence per Embed call, {args.deadline_ms:g} ms deadlines, "
             f"{args.duration:g} s per run; the server's metrics read every {INTERVAL * 1000:g} ms. Falls: readings "
             f"that found the slack lower than the one before. Stolen: the share of the server's core the "
             f"hypervisor gave elsewhere meanwhile.", "",
             "| build | round | goodput/s | client errors | refused | shed | slack: lowest | mean "
             f"| s below {LOW_SLACK} | falls | stolen |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(run["errors"].items())) or "none"
        lines.append(f"| {run['label']} | {run['round']} | {run['goodput_rps']:.1f} | {errors} | {run['refused']:.0f} "
                     f"| {run['shed']:.0f} | {run['slack_lowest']:.2f} | {run['slack_mean']:.2f} "
                     f"| {run['seconds_below']:.1f} | {run['falls']:.0f} | {fmt(run.get('server_stolen'), 3)} |")
    labels = list(dict.fromkeys(run["label"] for run in runs))
    if len(runs) > len(labels):
        lines += ["", "Medians over the rounds:", "", "| build | goodput/s | refused | shed | slack mean "
                  f"| s below {LOW_SLACK} |", "|---|---|---|---|---|---|"]
        for label in labels:
            mine = [run for run in runs if run["label"] == label]
            lines.append(f"| {label} | {median([r['goodput_rps'] for r in mine]):.1f} "
                         f"| {median([r['refused'] for r in mine]):.0f} | {median([r['shed'] for r in mine]):.0f} "
                         f"| {median([r['slack_mean'] for r in mine]):.2f} "
                         f"| {median([r['seconds_below'] for r in mine]):.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    parser = argparse.ArgumentParser(prog="bench.admission_trace", description=__doc__.splitlines()[0])
    add_load_arguments(parser, rate=115.0, duration=30.0, rounds=1, out=DEFAULT_OUT)
    parser.add_argument("--baseline", action="append", default=[], metavar="REF",
                        help="also run a checkout of this git ref (repeatable), as @REF")
    args = parser.parse_args(argv)
    texts = prepare_load(args)
    when = stamp()
    runs = []
    with checkouts(args.baseline, "trace-") as trees:
        builds = [("this", ROOT)] + [(f"@{ref}", path) for ref, path in trees.items()]
        for round_ in range(1, args.rounds + 1):
            for label, repo in builds:
                run = {**measure(label, repo, args, texts), "round": round_}
                runs.append(run)
                print(f"round {round_} {label}: goodput {run['goodput_rps']:.1f}/s, refused {run['refused']:.0f}, "
                      f"shed {run['shed']:.0f}, slack lowest {run['slack_lowest']:.2f} mean {run['slack_mean']:.2f}, "
                      f"{run['seconds_below']:.1f} s below {LOW_SLACK}", flush=True)
    lines = [f"# Admission's slack under load ({when.date_utc} UTC, commit {when.commit}, {when.cpu}, "
             f"{when.cores} cores)", "", *report(runs, args, argv)]
    publish(args.out, {"argv": argv, "rate": args.rate, "duration": args.duration, "deadline_ms": args.deadline_ms,
                       "runs": runs}, lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
