"""Where the server's CPU goes, thread by thread, under Poisson load.

    .venv/bin/python -m bench.threads --rate 1000 --rounds 3

`millibatch serve` (MiniLM by default) on the first core, the load generator on the others (its own
process: Poisson arrivals, one STS-B sentence per Embed call, a 100 ms deadline on every call). Each
round starts a fresh server, warms it, then reads every thread's CPU time and context switches from
/proc around one measured phase. Threads are grouped by the name the server gives them for the OS
(engines/thread_names.py): `event loop` is the process's main thread, `grpc-poller` gRPC's
completion-queue thread, `poller-pacer` the overload pacer, `engine-N` the instances, `engine-pool`
ONNX Runtime's intra-op threads; the rest (gRPC's EventEngine threads, the metrics server) is `other`.
`--variant LABEL=FLAGS` runs the same build with extra serve flags beside the defaults, each round
alternating them. Figures: share of one core per group, voluntary and involuntary switches per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.processes import ROOT, cores_for, run_loadgen, serve_launch, start_server, wait_ready
from bench.run import ensure_model
from bench.stats import median, stamp
from bench.texts import DEFAULT_STSB, stsb_sentences, text_set
from millibatch.engines.thread_names import GRPC_POLLER_NAME, POOL_NAME
from millibatch.service.poller_pacing import PACER_NAME

DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
DEFAULT_OUT = ROOT / "bench" / "results" / "threads"
#: Group order in the report.
GROUPS = ("event loop", GRPC_POLLER_NAME, PACER_NAME, "engine", POOL_NAME, "other")
TICKS = os.sysconf("SC_CLK_TCK")
#: Seconds from launching the load generator to the first reading (its start-up, then warm-up load).
LEAD_SECONDS = 1.5


def thread_group(pid: int, tid: int, name: str) -> str:
    if tid == pid:
        return "event loop"
    if name.startswith("engine-") and name[7:].isdigit():
        return "engine"
    return name if name in GROUPS else "other"


def thread_times(pid: int) -> dict[int, tuple[str, float, int, int]]:
    """Per thread of `pid`: (group, CPU seconds, voluntary switches, involuntary switches)."""
    threads = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        tid = int(entry)
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="ascii", errors="replace") as comm:
                name = comm.read().strip()
            cpu = thread_cpu_seconds(pid, tid)
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as status:
                counts = dict(line.split(":\t", 1) for line in status if "ctxt_switches" in line)
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        threads[tid] = (thread_group(pid, tid, name), cpu,
                        int(counts["voluntary_ctxt_switches"]), int(counts["nonvoluntary_ctxt_switches"]))
    return threads


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """CPU seconds (user and system) of thread `tid` of process `pid`."""
    with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def loop_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread: millibatch's event loop."""
    return thread_cpu_seconds(pid, pid)


def by_group(before: dict[int, tuple[str, float, int, int]], after: dict[int, tuple[str, float, int, int]],
             wall: float) -> dict[str, dict[str, float]]:
    """Each group's share of a core and switches per second between two `thread_times` readings."""
    groups: dict[str, dict[str, float]] = {}
    for tid, (group, cpu, voluntary, involuntary) in after.items():
        start = before.get(tid, (group, 0.0, 0, 0))
        entry = groups.setdefault(group, {"cores": 0.0, "voluntary_per_s": 0.0, "involuntary_per_s": 0.0})
        entry["cores"] += (cpu - start[1]) / wall
        entry["voluntary_per_s"] += (voluntary - start[2]) / wall
        entry["involuntary_per_s"] += (involuntary - start[3]) / wall
    return groups


def measure(label: str, flags: list[str], args: argparse.Namespace, texts: Path, raw: Path) -> dict[str, Any]:
    cores = cores_for("split")
    spec = serve_launch(args.model_dir, ["--threads-per-instance", str(len(cores.server)), "--log-level", "warning",
                                         *flags], name=f"threads-{label}")
    server = start_server(spec, cores, raw)
    try:
        wait_ready(server, cores, texts, 120)
        run_loadgen(spec, cores, texts, ["--mode", "closed", "--concurrency", "16", "--duration", "3", "--warmup", "0",
                                         "--timeout", "5"], None, 120)
        pid = server.process.pid
        # /proc is read on a timer inside the load: after the load generator's start-up and warm-up, and
        # a second before its measured phase ends.
        readings: list[tuple[float, dict[int, tuple[str, float, int, int]]]] = []
        timer = threading.Timer(LEAD_SECONDS, lambda: readings.append((time.monotonic(), thread_times(pid))))
        closer = threading.Timer(LEAD_SECONDS + args.duration - 1.0,
                                 lambda: readings.append((time.monotonic(), thread_times(pid))))
        timer.start()
        closer.start()
        result = run_loadgen(spec, cores, texts, ["--mode", "open", "--rate", str(args.rate), "--duration",
                                                  str(args.duration), "--warmup", str(LEAD_SECONDS), "--timeout",
                                                  str(args.deadline_ms / 1000)], raw / f"{label}.json",
                             args.duration + 120)
        closer.join()
        (started, before), (ended, after) = readings
        groups = by_group(before, after, ended - started)
    finally:
        server.stop()
    assert result is not None
    return {"label": label, "flags": flags, "groups": groups, "goodput_rps": result["goodput_rps"],
            "refusal_p99_ms": result.get("error_p99_ms", {}).get("RESOURCE_EXHAUSTED"),
            "client_cpu_cores": result["client_cpu_cores"], "offered_rps": result["offered_rps"]}


def report(summary: dict[str, Any], out: Path) -> None:
    labels = list(dict.fromkeys(run["label"] for run in summary["runs"]))
    lines = [f"# Server CPU by thread ({summary['date_utc']} UTC, commit {summary['commit']}, {summary['cpu']}, "
             f"{summary['cores']} cores)", "",
             f"`.venv/bin/python -m bench.threads {' '.join(summary['argv'])}`: server on one core, Poisson "
             f"arrivals at {summary['rate']:g} calls/s on the other, one STS-B sentence per Embed call, "
             f"{summary['deadline_ms']:g} ms deadlines, {summary['duration']:g} s per round. Medians over "
             f"{summary['rounds']} rounds: share of one core, voluntary / involuntary switches per second.", "",
             "| variant | goodput/s | refusal p99 ms | " + " | ".join(GROUPS) + " |",
             "|---|---|---|" + "---|" * len(GROUPS)]
    for label in labels:
        runs = [run for run in summary["runs"] if run["label"] == label]
        cells = []
        for group in GROUPS:
            present = [run["groups"][group] for run in runs if group in run["groups"]]
            if not present:
                cells.append("-")
                continue
            cells.append(f"{median([g['cores'] for g in present]):.3f} "
                         f"({median([g['voluntary_per_s'] for g in present]):.0f} / "
                         f"{median([g['involuntary_per_s'] for g in present]):.0f})")
        p99s = [run["refusal_p99_ms"] for run in runs if run["refusal_p99_ms"] is not None]
        p99 = f"{median(p99s):.1f}" if p99s else "-"
        lines.append(f"| {label} | {median([run['goodput_rps'] for run in runs]):.1f} | {p99} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Rounds: " + "; ".join(f"{run['label']} {run['goodput_rps']:.0f}/s, engine "
                                         f"{run['groups'].get('engine', {}).get('cores', 0):.3f}, loop "
                                         f"{run['groups'].get('event loop', {}).get('cores', 0):.3f}"
                                         for run in summary["runs"]), ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


def add_load_arguments(parser: argparse.ArgumentParser, rate: float, duration: float, rounds: int,
                       out: Path) -> None:
    """The flags of a benchmark that puts Poisson load of STS-B sentences on a server on one core."""
    parser.add_argument("--rate", type=float, default=rate, help="Poisson arrivals per second")
    parser.add_argument("--duration", type=float, default=duration, help="measured seconds per run")
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL, help="model dir (MiniLM converted if absent)")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    parser.add_argument("--out", type=Path, default=out)


def prepare_load(args: argparse.Namespace) -> Path:
    """Convert the model if absent, make `--out`'s raw folder and write the sentences there; their file."""
    args.model_dir = ensure_model(args.model_dir.resolve())
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    texts = raw / "texts-sts.json"
    texts.write_text(json.dumps(text_set("sts", stsb_sentences(args.stsb))), encoding="utf-8")
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.threads", description=__doc__.splitlines()[0])
    add_load_arguments(parser, rate=1000.0, duration=8.0, rounds=3, out=DEFAULT_OUT)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                        help="also run the server with these extra serve flags, alternating with the defaults")
    args = parser.parse_args(argv)
    texts = prepare_load(args)
    raw = texts.parent
    variants = [("default", [])] + [(label, flags.split()) for label, _, flags in
                                    (item.partition("=") for item in args.variant)]
    when = stamp()
    runs = []
    for round_ in range(1, args.rounds + 1):
        for label, flags in variants:
            run = measure(label, flags, args, texts, raw)
            run["round"] = round_
            runs.append(run)
            print(f"round {round_} {label}: goodput {run['goodput_rps']:.1f}/s, "
                  + ", ".join(f"{group} {run['groups'][group]['cores']:.3f}" for group in GROUPS
                              if group in run["groups"]), flush=True)
    summary = {"date_utc": when.date_utc, "commit": when.commit, "cpu": when.cpu, "cores": when.cores,
               "argv": argv if argv is not None else sys.argv[1:], "rate": args.rate, "duration": args.duration,
               "deadline_ms": args.deadline_ms, "rounds": args.rounds, "runs": runs}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    report(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
