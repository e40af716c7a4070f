"""Goodput under overload, and the highest Poisson rate held under a p99 bound, for millibatch and Triton.

    .venv/bin/python -m bench.goodput                          # millibatch vs triton-text, STS-B sentences
    .venv/bin/python -m bench.goodput --texts long --rounds 2  # long texts, each peer twice (A B A B)
    .venv/bin/python -m bench.goodput --peers millibatch --variant "limit=--max-concurrent-calls 48"
                                                               # the same build with other settings, side by side

Every call carries one text and a deadline (`--deadline-ms`, 100 by default): millibatch reads it from
gRPC; Triton gets it the way a Triton user does, from a queue policy (timeout = the deadline, REJECT,
`--triton-max-queue`); infinity-emb (peers `infinity`, its PyTorch engine, and `infinity-onnx`, its ONNX
Runtime engine) knows none, and its HTTP client gives up at it.
The load generator is its own process on its own core(s) and reports its CPU.
For each peer:

1. **sweep**: open-loop Poisson rates rising by `--step` until goodput falls well behind the offered
   rate. The peer's *peak* is its best goodput (OK answers within the deadline, per second). Its
   *p99-bound rate* is the highest rate at which p99 over every call (failures count as infinitely
   slow) stays within the deadline, MLPerf's server-scenario measure; two bisection steps refine it.
2. **overload**: `--multiples` of that peak (1x to 5x by default): goodput, p99 of the OKs, shed
   (DEADLINE_EXCEEDED; through the HTTP door 504 or the client's timeout), refused (RESOURCE_EXHAUSTED;
   429), how soon refusals arrive, mean rows per batch (from the server's own metrics), client and server
   CPU, and millibatch's event loop and engine threads apart (bench/threads.py splits the rest).

Writes results.json, results.md and goodput.png to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from bench.loadgen import THROTTLED
from bench.peers.catalog import CLIENT_PEERS, DOOR_PEERS, DOORS, INFINITY_ONNX, INFINITY_PEERS, PeerContext, launch
from bench.processes import (
    Cores,
    Server,
    checkouts,
    cores_for,
    cpu_ticks,
    process_cpu,
    run_loadgen,
    start_server,
    stolen_share,
    wait_ready,
)
from bench.run import ensure_model, infinity_env, triton_env
from bench.stats import stamp
from bench.texts import DEFAULT_STSB, TEXT_SETS, stsb_sentences, text_set
from bench.threads import loop_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "goodput"
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
READY_SECONDS = 240.0

#: Counters read from each server's metrics endpoint around a phase: (batches, rows, shed, refused).
MILLIBATCH_COUNTERS = {"batches": "millibatch_batch_rows_count", "rows": "millibatch_batch_rows_sum",
                       "shed": "millibatch_shed_requests_total", "refused": "millibatch_rejected_requests_total",
                       "engine_cpu": "millibatch_engine_cpu_seconds_total"}
#: The load generator's failure kinds for a call refused at once (gRPC's status, and each door's own, as
#: DOORS names it), and for one that ran out of time (gRPC's status, either side's; the HTTP door's 504;
#: the HTTP client's own timeout at the deadline).
REFUSED = tuple(dict.fromkeys(["RESOURCE_EXHAUSTED", *(door.refused for door in DOORS.values())]))
EXPIRED = ("DEADLINE_EXCEEDED", "http-504", "timeout")
TRITON_COUNTERS = {"batches": "nv_inference_exec_count", "rows": "nv_inference_count",
                   "failed": "nv_inference_request_failure"}


class Outcomes(NamedTuple):
    """A phase's failed calls by what became of them."""

    shed: int
    refused: int
    #: Refused by the client's own throttle (peer millibatch-throttled), never sent.
    throttled: int
    other: int


def refusal_p99(phase: dict[str, Any]) -> float | None:
    """How soon a refused caller heard it: the p99 of the phase's refusal kind (the slowest, if several)."""
    return max((ms for kind, ms in phase["error_p99_ms"].items() if kind in REFUSED), default=None)


def outcomes(phase: dict[str, Any]) -> Outcomes:
    """A phase's failed calls, from the load generator's failure kinds."""
    kinds = phase["error_kinds"]
    shed = sum(kinds.get(kind, 0) for kind in EXPIRED)
    refused = sum(kinds.get(kind, 0) for kind in REFUSED)
    throttled = kinds.get(THROTTLED, 0)
    return Outcomes(shed, refused, throttled, phase["errors"] - shed - refused - throttled)


def scrape(url: str | None, names: dict[str, str]) -> dict[str, float]:
    """Sum of each named metric over its labels, read from a Prometheus text endpoint ({} if unreachable)."""
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode("utf-8")
    except OSError:
        return {}
    wanted = {metric: key for key, metric in names.items()}
    totals: dict[str, float] = {}  # only what the server exports (an older build may lack a metric)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric in wanted:
            totals[wanted[metric]] = totals.get(wanted[metric], 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


class Peer:
    """One running server and the phases measured on it."""

    def __init__(self, name: str, server: Server, cores: Cores, texts: Path, deadline: float, duration: float,
                 raw: Path) -> None:
        self.name, self.server, self.cores, self.texts = name, server, cores, texts
        self.deadline, self.duration, self.raw = deadline, duration, raw
        self.millibatch = server.launch.name.startswith("millibatch")  # through any of its doors
        self.counters = MILLIBATCH_COUNTERS if self.millibatch else TRITON_COUNTERS

    def phase(self, rate: float, tag: str) -> dict[str, Any]:
        """One open-loop phase at `rate` calls/s; the load generator's summary plus server-side figures."""
        raw_file = self.raw / f"{self.name}-{tag}-{rate:.0f}.json"
        before = scrape(self.server.launch.metrics_url, self.counters)
        pid, millibatch = self.server.process.pid, self.millibatch
        loop_before = loop_cpu_seconds(pid) if millibatch else 0.0
        ticks_before = cpu_ticks(self.cores.server)
        client_ticks_before = cpu_ticks(self.cores.client)
        cpu_before, wall_before = process_cpu(pid), time.perf_counter()
        flags = ["--mode", "open", "--rate", f"{rate:.3f}", "--duration", str(self.duration), "--warmup", "0",
                 "--timeout", str(self.deadline), "--max-outstanding", "100000"]
        result = run_loadgen(self.server.launch, self.cores, self.texts, flags, raw_file, self.duration + 120)
        assert result is not None
        wall = time.perf_counter() - wall_before
        after = scrape(self.server.launch.metrics_url, self.counters)
        delta = {key: after[key] - before.get(key, 0.0) for key in after}
        result.pop("latencies_ms", None)
        result.update(peer=self.name, tag=tag, raw=raw_file.name,
                      server_cpu_cores=(process_cpu(pid) - cpu_before) / wall,
                      # Of the server's cores' time, the share the hypervisor gave elsewhere.
                      server_stolen=stolen_share(ticks_before, cpu_ticks(self.cores.server)),
                      client_stolen=stolen_share(client_ticks_before, cpu_ticks(self.cores.client)),
                      # The event loop's share (millibatch's main thread): admission, refusals, answers.
                      loop_cpu_cores=(loop_cpu_seconds(pid) - loop_before) / wall if millibatch else None,
                      server_counters=delta,
                      rows_per_batch=delta["rows"] / delta["batches"] if delta.get("batches") else None,
                      # CPU the engine threads got (millibatch only): what goodput is made of.
                      engine_cpu_cores=delta["engine_cpu"] / wall if "engine_cpu" in delta else None)
        found = outcomes(result)
        result.update(shed=found.shed, refused=found.refused, throttled=found.throttled, other_errors=found.other)
        p99_all = result["p99_all_ms"]
        print(f"  {self.name:>12} {tag:>9} offered {rate:7.1f}/s  goodput {result['goodput_rps']:7.1f}/s  "
              f"p99(ok) {result['p99_ms']:6.1f} ms  p99(all) {'-' if p99_all is None else f'{p99_all:.1f}':>6}  "
              f"shed {result['shed']:5d}  refused {result['refused']:5d}  throttled {result['throttled']:5d}  "
              f"other {result['other_errors']:4d}  "
              f"late-ok {result['late_ok']}  rows/batch {fmt(result['rows_per_batch'])}  "
              f"cpu server {result['server_cpu_cores']:.2f} client {result['client_cpu_cores']:.2f} "
              f"stolen {fmt(result['server_stolen'], 3)} / {fmt(result['client_stolen'], 3)}", flush=True)
        return result


def within_bound(result: dict[str, Any], bound_ms: float) -> bool:
    """MLPerf server scenario: p99 over every call (failures infinitely slow) within the bound."""
    p99_all = result["p99_all_ms"]
    return p99_all is not None and p99_all <= bound_ms


#: The rising sweep ends after this many rates in a row that brought less than SWEEP_GAIN times the best goodput.
SWEEP_PAST_PEAK = 2
SWEEP_GAIN = 1.03


def past_peak(steps: int, goodput: float, best: float) -> int:
    """Rates in a row past the peak, after a step that answered `goodput` against the `best` before it. Past the
    peak, more offered load brings no more goodput. (A server that refuses what cannot meet its deadline answers
    less than it is offered well before its peak, so goodput against offered load would end the sweep early.)"""
    return steps + 1 if goodput < SWEEP_GAIN * best else 0


def sweep(peer: Peer, start: float, step: float, bound_ms: float) -> tuple[float, float, list[dict[str, Any]]]:
    """Rising rates until goodput lags far behind; returns (peak goodput, p99-bound rate, phases)."""
    phases: list[dict[str, Any]] = []
    rate, best, misses = start, 0.0, 0
    while misses < SWEEP_PAST_PEAK:
        result = peer.phase(rate, "sweep")
        phases.append(result)
        misses = past_peak(misses, result["goodput_rps"], best)
        best = max(best, result["goodput_rps"])
        rate *= step
    passing = [p["offered_rps"] for p in phases if within_bound(p, bound_ms)]
    low = max(passing, default=0.0)
    failing = [p["offered_rps"] for p in phases if p["offered_rps"] > low]
    high = min(failing, default=low * step)
    for _ in range(2):  # bisection between the last rate held and the first one missed
        if low <= 0:
            break
        middle = (low + high) / 2
        result = peer.phase(middle, "bound")
        phases.append(result)
        if within_bound(result, bound_ms):
            low = middle
        else:
            high = middle
    return best, low, phases


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def peak_phase(run: dict[str, Any]) -> dict[str, Any] | None:
    """The sweep phase that set the run's peak (bisection phases never do)."""
    sweep = [p for p in run["sweep"] if p.get("tag", "sweep") == "sweep"]
    return max(sweep, key=lambda p: p["goodput_rps"], default=None)


def text_held(phase: dict[str, Any], peak: dict[str, Any] | None) -> float | None:
    """Text answered in time per second (goodput times the answered texts' mean length) over that of the
    `peak` phase; None for runs from before the load generator measured lengths. A server whose admission
    keeps shorter texts near its peak answers more calls there than it can at every length: in calls,
    offered only the peak's count it then seems to hold less than it does."""
    if peak is None or not peak.get("mean_chars_ok") or phase.get("mean_chars_ok") is None:
        return None
    return float(phase["goodput_rps"] * phase["mean_chars_ok"] / (peak["goodput_rps"] * peak["mean_chars_ok"]))


def report(summary: dict[str, Any], out: Path) -> None:
    """results.md (tables) and goodput.png (goodput and p99 against offered load)."""
    info = summary["machine"]
    lines = [f"# Goodput under overload and the p99-bound rate ({summary['texts']} texts)", "",
             f"`.venv/bin/python -m bench.goodput {' '.join(summary['argv'])}`, {info['date_utc']} UTC, commit "
             f"{info['commit']}, {info['cpu']}, {info['cores']} cores (server on {summary['server_cores']}, client on "
             f"{summary['client_cores']}). Deadline {summary['deadline_ms']:.0f} ms on every call; Triton's queue "
             f"policy: timeout {summary['deadline_ms']:.0f} ms, REJECT, max_queue_size {summary['triton_max_queue']}.",
             "", "Held: the lowest goodput of the overload phases over the peak (the best goodput of the rising "
             "sweep), and, stricter, over the best goodput seen in any phase of the peer's run; held in text: the "
             "lowest text answered in time per second (goodput × mean length of the answered texts) over that of "
             "the peak's phase. Stolen: the share of the server's and of the client's cores' time the hypervisor "
             "gave elsewhere during the phase (steal time in /proc/stat: on a VM, a slow phase's cause that no "
             "process shows). Client GC: the load generator's longest garbage-collection pause in the phase, which "
             "delays every answer that arrives meanwhile (refusals' tails included). Late OK: OKs the client's own "
             "code took after its deadline (counted from before the call, client work included); over gRPC the "
             "client library received them in time, or it would have ended the call DEADLINE_EXCEEDED.", "",
             "| peer | round | peak goodput/s | p99-bound rate/s (p99 ≤ "
             f"{summary['deadline_ms']:.0f} ms, errors ≤ 1%) | held / peak | held / best seen | held in text |",
             "|---|---|---|---|---|---|---|"]
    for run in summary["runs"]:
        worst = min((p["goodput_rps"] for p in run["overload"]), default=0.0)
        best = max(p["goodput_rps"] for p in run["sweep"] + run["overload"])
        peak = peak_phase(run)
        texts = [t for t in (text_held(p, peak) for p in run["overload"]) if t is not None]
        lines.append(f"| {run['peer']} | {run['round']} | {run['peak_goodput']:.1f} | {run['bound_rate']:.1f} | "
                     f"{worst / run['peak_goodput']:.2f} | {worst / best:.2f} | {fmt(min(texts, default=None), 2)} |")
    lines += ["", "## Overload", "", "| peer | round | × peak | offered/s | goodput/s | goodput / peak | text / peak's "
              "| p99 OK ms | shed | refused | throttled | other errors | late OK | refusal p99 ms | rows/batch "
              "| OK length / sent | server CPU | loop CPU | engine CPU | client CPU | stolen, server / client cores "
              "| client GC, longest ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in summary["runs"]:
        peak = peak_phase(run)
        for p in run["overload"]:
            refusal = refusal_p99(p)
            shed, refused, throttled, other = outcomes(p)
            # Mean length of the texts answered in time over those sent (older runs lack it): below 1, the
            # server answered the shorter ones.
            length = p["mean_chars_ok"] / p["mean_chars_sent"] if p.get("mean_chars_sent") else None
            lines.append(
                f"| {run['peer']} | {run['round']} | {p['multiple']:.1f} | {p['offered_rps']:.0f} "
                f"| {p['goodput_rps']:.1f} | {p['goodput_rps'] / run['peak_goodput']:.2f} "
                f"| {fmt(text_held(p, peak), 2)} | {p['p99_ms']:.1f} "
                f"| {shed} | {refused} | {throttled} "
                f"| {other} | {p['late_ok']} | {fmt(refusal)} | {fmt(p['rows_per_batch'])} "
                f"| {fmt(length, 2)} | {p['server_cpu_cores']:.2f} | {fmt(p.get('loop_cpu_cores'), 2)} "
                f"| {fmt(p.get('engine_cpu_cores'), 2)} | {p['client_cpu_cores']:.2f} "
                f"| {fmt(p.get('server_stolen'), 3)} / {fmt(p.get('client_stolen'), 3)} "
                f"| {fmt(p.get('client_gc_max_ms'))} |")
    lines += ["", "## Sweep", "", "| peer | round | offered/s | goodput/s | p99 OK ms | p99 all ms | errors | "
              "rows/batch |", "|---|---|---|---|---|---|---|---|"]
    for run in summary["runs"]:
        for p in sorted(run["sweep"], key=lambda p: p["offered_rps"]):
            lines.append(f"| {run['peer']} | {run['round']} | {p['offered_rps']:.1f} | {p['goodput_rps']:.1f} | "
                         f"{p['p99_ms']:.1f} | {fmt(p['p99_all_ms'])} | {p['errors']} | {fmt(p['rows_per_batch'])} |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(summary, out / "goodput.png")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in summary["runs"]:
        label = f"{run['peer']} (round {run['round']})"
        points = sorted(run["sweep"] + run["overload"], key=lambda p: p["offered_rps"])
        line, = left.plot([p["offered_rps"] for p in points], [p["goodput_rps"] for p in points], "o-", label=label)
        left.axhline(0.9 * run["peak_goodput"], color=line.get_color(), linestyle=":", linewidth=0.8)
        sweep_points = sorted(run["sweep"], key=lambda p: p["offered_rps"])
        right.plot([p["offered_rps"] for p in sweep_points],
                   [p["p99_all_ms"] if p["p99_all_ms"] is not None else float("nan") for p in sweep_points],
                   "o-", color=line.get_color(), label=f"{label}: {run['bound_rate']:.0f}/s held")
    left.set(xlabel="offered calls/s (Poisson)", ylabel="goodput: OK within deadline /s",
             title=f"Goodput ({summary['texts']} texts, {summary['deadline_ms']:.0f} ms deadline); dotted: 0.9 x peak")
    right.axhline(summary["deadline_ms"], color="grey", linestyle="--", linewidth=0.8)
    right.set(xlabel="offered calls/s (Poisson)", ylabel="p99 over all calls, ms (gaps: > 1% failed)",
              title="p99 bound (MLPerf server scenario)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_peer(name: str, round_: int, args: argparse.Namespace, ctx: PeerContext, cores: Cores, texts: Path,
             raw: Path) -> dict[str, Any]:
    """Start peer `name`, measure its sweep and overload curve, stop it."""
    deadline = args.deadline_ms / 1000.0
    if name.startswith("triton"):
        extra = ["--queue-timeout-us", str(int(args.deadline_ms * 1000)),
                 "--max-queue-size", str(args.triton_max_queue)]
    else:
        extra = [*args.server_args, *args.variants.get(name, [])]
    if name in args.builds:  # millibatch@REF (or a door, millibatch-v2@REF): another build, from its worktree
        base = name.partition("@")[0]
        spec = replace(launch(base, ctx.model_dir, ctx, extra, repo=args.builds[name]), name=name)
    else:
        spec = launch(name, args.models.get(name, ctx.model_dir), ctx, extra)
    print(f"{name} round {round_} (server cores {sorted(cores.server)}, client cores {sorted(cores.client)}): "
          f"{' '.join(extra) or 'default settings'}", flush=True)
    server = start_server(spec, cores, raw)
    try:
        wait_ready(server, cores, texts, READY_SECONDS)
        run_loadgen(spec, cores, texts, ["--mode", "closed", "--concurrency", "16", "--duration", "3", "--warmup", "0",
                                         "--timeout", "5"], None, 120)
        peer = Peer(name, server, cores, texts, deadline, args.duration, raw)
        peak, bound, phases = sweep(peer, args.start_rate, args.step, args.deadline_ms)
        print(f"  {name}: peak goodput {peak:.1f}/s, p99-bound rate {bound:.1f}/s", flush=True)
        overload = []
        for multiple in args.multiples:
            result = peer.phase(peak * multiple, f"x{multiple:g}")
            result["multiple"] = multiple
            overload.append(result)
    finally:
        server.stop()
    return {"peer": name, "round": round_, "peak_goodput": peak, "bound_rate": bound, "sweep": phases,
            "overload": overload, "command": spec.command}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.goodput", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="millibatch,triton-text", help="comma-separated: millibatch, "
                        "triton-text, triton-ids, millibatch-v2 / millibatch-http / millibatch-openai / "
                        "millibatch-openai-node (millibatch through its KServe V2 door with tritonclient / its "
                        "OpenAI HTTP door with X-Request-Timeout / that door with the official OpenAI Python or "
                        "Node SDK, its timeout and retries), millibatch-throttled (Embed from a client that "
                        "throttles itself, millibatch.throttle), millibatch-LABEL (with --model LABEL=DIR), infinity "
                        "(infinity-emb's OpenAI-compatible server, the deadline its HTTP client's timeout), "
                        "infinity-onnx (the same with its ONNX Runtime engine)")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=DIR",
                        help="serve DIR as peer millibatch-LABEL (e.g. int8=models/minilm-int8)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL, help="fp32 model dir (converted if absent)")
    parser.add_argument("--texts", choices=TEXT_SETS, default="sts")
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--start-rate", type=float, default=40.0, help="first rate of the sweep, calls/s")
    parser.add_argument("--step", type=float, default=1.25, help="factor between sweep rates")
    parser.add_argument("--multiples", type=lambda s: [float(x) for x in s.split(",")], default=[1, 1.5, 2, 3, 4, 5],
                        help="overload rates as multiples of the peak goodput")
    parser.add_argument("--rounds", type=int, default=1, help="run the peers this many times, alternating")
    parser.add_argument("--pinning", choices=("split", "shared"), default="split",
                        help="split: server on core 0, client on the rest; shared: both float on every core")
    parser.add_argument("--triton-max-queue", type=int, default=128, help="Triton queue policy's max_queue_size")
    parser.add_argument("--triton-python", default=None, help="Python of the environment with nvidia-pytriton")
    parser.add_argument("--infinity", default=None,
                        help="`infinity_emb` of the environment with infinity-emb (peers infinity, infinity-onnx)")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/goodput/TEXTS)")
    parser.add_argument("--server-args", default="", help="extra flags for millibatch serve (one string)")
    parser.add_argument("--report", type=Path, default=None, metavar="RESULTS_JSON",
                        help="write results.md and goodput.png again from an earlier run's results.json, then stop")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                        help="also run this build with extra serve flags as peer millibatch+LABEL, e.g. "
                             "'limit=--max-concurrent-calls 48'; PEER+LABEL=FLAGS runs it as that millibatch peer "
                             "(e.g. 'millibatch-throttled+normal=--grpc-poller-policy normal'); flags after `--` go "
                             "to the load generator (e.g. 'millibatch-throttled+k1.5=-- --throttle 1.5')")
    parser.add_argument("--baseline", action="append", default=[], metavar="REF",
                        help="also run each millibatch peer as built at git REF (peer millibatch@REF, "
                             "millibatch-v2@REF, ...), e.g. the commit "
                             "before a change, so both are measured in the same run")
    return parser


def variant_peers(variants: list[str]) -> dict[str, list[str]]:
    """--variant's peers and their serve flags: LABEL=FLAGS is millibatch+LABEL; PEER+LABEL=FLAGS runs the
    variant as that millibatch peer is run (millibatch-throttled+LABEL: called by a throttling client)."""
    found = {}
    for item in variants:
        label, _, flags = item.partition("=")
        found[label if "+" in label else f"millibatch+{label}"] = flags.split()
    return found


def baseline_peers(peers: list[str], refs: list[str]) -> dict[str, str]:
    """The peers that run other builds, each with its git ref: every millibatch peer asked for (Embed, or
    a door such as millibatch-v2) as built at each ref, or millibatch@REF where none is asked for."""
    served = [p for p in peers if p == "millibatch" or p in DOOR_PEERS or p in CLIENT_PEERS] or ["millibatch"]
    return {f"{peer}@{ref}": ref for ref in refs for peer in served}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report is not None:  # only render an earlier run's results.json again
        report(json.loads(args.report.read_text(encoding="utf-8")), args.report.parent)
        return 0
    args.server_args = args.server_args.split()
    args.models = {f"millibatch-{label}": Path(folder).resolve()
                   for label, _, folder in (item.partition("=") for item in args.model)}
    out = args.out or DEFAULT_OUT / args.texts
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    texts = raw / f"texts-{args.texts}.json"
    texts.write_text(json.dumps(text_set(args.texts, stsb_sentences(args.stsb))), encoding="utf-8")
    cores = cores_for(args.pinning)
    triton_python, triton_libdir = triton_env(args.triton_python)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    # Looked for only when asked for: the check imports torch in that environment, seconds on a small machine.
    wants_infinity = any(name in INFINITY_PEERS for name in peers)
    infinity = infinity_env(args.infinity, onnx=INFINITY_ONNX in peers) if wants_infinity else None
    ctx = PeerContext(ensure_model(args.model_dir.resolve()), len(cores.server), triton_python, triton_libdir, infinity)
    when = stamp()
    info = {"date_utc": when.date_utc, "cpu": when.cpu, "cores": when.cores, "commit": when.commit,
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}
    args.variants = variant_peers(args.variant)
    peers += list(args.variants)
    runs = []
    with checkouts(args.baseline, "goodput-") as trees:
        args.builds = {name: trees[ref] for name, ref in baseline_peers(peers, args.baseline).items()}
        peers += list(args.builds)
        for round_ in range(1, args.rounds + 1):
            for name in peers:
                if name.startswith("triton") and triton_python is None:
                    print(f"{name}: skipped (no Triton environment; `make bench` builds build/bench-triton-venv)")
                    continue
                if name in INFINITY_PEERS and ctx.infinity is None:
                    print(f"{name}: skipped (no infinity-emb environment, or one without its ONNX engine; "
                          "`make build/bench-infinity-venv/.stamp` builds it)")
                    continue
                runs.append(run_peer(name, round_, args, ctx, cores, texts, raw))
    summary = {"machine": info, "argv": argv if argv is not None else sys.argv[1:], "texts": args.texts,
               "deadline_ms": args.deadline_ms, "triton_max_queue": args.triton_max_queue,
               "server_cores": sorted(cores.server), "client_cores": sorted(cores.client), "runs": runs}
    (out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    report(summary, out)
    print(f"wrote {out}/results.md, results.json and goodput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
