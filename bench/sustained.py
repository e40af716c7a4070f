"""Sustained overload: minutes at a multiple of the peak, to see that what holds for a phase holds for long.

    .venv/bin/python -m bench.sustained                              # 5x the peak for 10 minutes, STS-B
    .venv/bin/python -m bench.sustained --multiple 3 --minutes 30 --interval 60
    .venv/bin/python -m bench.sustained --peak 280 --minutes 5       # skip the sweep
    .venv/bin/python -m bench.sustained --variant "unread=--refuse-unread"   # two servers, interval by interval
    .venv/bin/python -m bench.sustained --throttled   # beside it, the same from a client that throttles itself
    .venv/bin/python -m bench.sustained --throttled --variant "millibatch-throttled+k1.5=-- --throttle 1.5"

bench.goodput offers each multiple for 8 s; a leak, a counter that grows with every refusal, or a queue that
drifts shows only over minutes. This serves the model as bench.goodput does (server on one core, the load
generator, its own process, on the other; Poisson arrivals, a 100 ms deadline on every call), finds the
peak goodput with bench.goodput's sweep (or takes `--peak`), then offers `--multiple` times it for
`--minutes`, one load-generator run per `--interval`. Each interval reports goodput over the peak, refusals
and how soon they arrive, the p99 of the answers, any other status, OKs that arrived late, the server's
resident memory and its CPU by part. At the end the server's own count of finished calls (Embed's, or
those of the door a peer calls through; `millibatch_requests_total`) is set against the calls the client
made: a call the server never finished shows as a difference (so would one gRPC ended before any handler
ran, such as a call whose deadline passed on the way). The official OpenAI SDK's retries (peer
millibatch-openai) are calls to the server but not to its caller: there the server counts more. With
`--variant`, each variant is a server of its own on the same core, held in overload interval by interval
beside the plain one (A B, B A, ...), so that the machine's drift, which swamps a few percent between
8-second phases, falls on both alike. Writes results.json and results.md to `--out`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.goodput import DEFAULT_MODEL, EXPIRED, REFUSED, Peer, fmt, outcomes, refusal_p99, sweep, variant_peers
from bench.loadgen import THROTTLED
from bench.peers.catalog import SERVED_RPC, PeerContext, launch
from bench.processes import Server, cores_for, rss_mib, run_loadgen, start_server, wait_ready
from bench.run import ensure_model
from bench.stats import Stamp, median, publish, stamp
from bench.texts import DEFAULT_STSB, TEXT_SETS, stsb_sentences, text_set

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "sustained"
#: Statuses a call may end with under overload (issue 15): an answer, a refusal (each door's own), or its
#: deadline (and, from a throttling client, a refusal in the client, never sent); bench.goodput's reading.
EXPECTED = frozenset({*REFUSED, *EXPIRED, THROTTLED})


def finished_calls(metrics_url: str, rpc: str = "Embed") -> dict[str, float]:
    """The server's count of finished `rpc` calls by status (millibatch_requests_total), summed over models."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode("utf-8")
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "millibatch_requests_total" and sample.labels.get("rpc") == rpc:
                code = sample.labels["code"]
                counts[code] = counts.get(code, 0.0) + sample.value
    return counts


def interval_row(result: dict[str, Any], peak: float, rss: float, elapsed: float) -> dict[str, Any]:
    """The figures of one interval, as the report shows them."""
    found = outcomes(result)
    return {"t_s": elapsed, "offered_rps": result["offered_rps"], "goodput_rps": result["goodput_rps"],
            "held": result["goodput_rps"] / peak if peak else 0.0, "calls": result["requests"],
            "refused": found.refused, "throttled": found.throttled, "shed": found.shed,
            "other": {k: v for k, v in result["error_kinds"].items() if k not in EXPECTED},
            "refusal_p99_ms": refusal_p99(result), "p99_ok_ms": result["p99_ms"],
            "late_ok": result["late_ok"], "rss_mib": rss, "server_cpu": result["server_cpu_cores"],
            "loop_cpu": result["loop_cpu_cores"], "engine_cpu": result["engine_cpu_cores"],
            "client_cpu": result["client_cpu_cores"], "rows_per_batch": result["rows_per_batch"],
            # Below 1: the calls answered in time were shorter than those sent (long ones refused first).
            "ok_length": result["mean_chars_ok"] / result["mean_chars_sent"] if result["mean_chars_sent"] else None}


class Held:
    """One server held in overload: its interval rows and the calls the client made to it."""

    def __init__(self, peer: Peer, peak: float) -> None:
        assert peer.server.launch.metrics_url is not None
        self.peer, self.metrics_url, self.peak = peer, peer.server.launch.metrics_url, peak
        self.rpc = SERVED_RPC[peer.server.launch.protocol]  # Embed, or the door's calls
        self.before = finished_calls(self.metrics_url, self.rpc)
        self.rss_start = rss_mib(peer.server.process.pid)
        self.rows: list[dict[str, Any]] = []
        self.sent = 0
        self.client_codes: dict[str, int] = {"OK": 0}

    def interval(self, rate: float, index: int, elapsed: float) -> None:
        result = self.peer.phase(rate, f"sustained{index}")
        self.rows.append(interval_row(result, self.peak, rss_mib(self.peer.server.process.pid), elapsed))
        self.sent += result["requests"] - result["error_kinds"].get(THROTTLED, 0)  # calls that left the client
        self.client_codes["OK"] += result["ok"]
        for kind, count in result["error_kinds"].items():
            self.client_codes[kind] = self.client_codes.get(kind, 0) + count

    def summary(self) -> dict[str, Any]:
        after = finished_calls(self.metrics_url, self.rpc)
        server_codes = {code: count for code in after if (count := after[code] - self.before.get(code, 0.0))}
        return {"command": self.peer.server.launch.command, "rss_start_mib": self.rss_start, "intervals": self.rows,
                "client_calls": self.sent, "client_codes": self.client_codes,
                "server_finished": sum(server_codes.values()), "server_codes": server_codes}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Serve this build (and its variants), find the peak, hold the overload, and account for every call."""
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    texts = raw / f"texts-{args.texts}.json"
    texts.write_text(json.dumps(text_set(args.texts, stsb_sentences(args.stsb))), encoding="utf-8")
    cores = cores_for("split")
    ctx = PeerContext(ensure_model(args.model_dir.resolve()), len(cores.server), None, None)
    flags = {"millibatch": args.server_args.split()}
    flags.update({name: [*args.server_args.split(), *extra] for name, extra in variant_peers(args.variant).items()})
    if args.throttled:  # the same server, called by a client that throttles itself (bench.peers.catalog)
        flags["millibatch-throttled"] = args.server_args.split()
    servers: list[Server] = []
    held: dict[str, Held] = {}
    try:
        # Every server waits on the same core while another is loaded: an idle one takes next to no CPU.
        for name, extra in flags.items():
            spec = launch(name, ctx.model_dir, ctx, extra)
            servers.append(server := start_server(spec, cores, raw))
            wait_ready(server, cores, texts, 120)
            run_loadgen(spec, cores, texts, ["--mode", "closed", "--concurrency", "16", "--duration", "3",
                                             "--warmup", "0", "--timeout", "5"], None, 120)
        peers = [Peer(name, server, cores, texts, args.deadline_ms / 1000, 8.0, raw)
                 for name, server in zip(flags, servers, strict=True)]
        peak = args.peak or sweep(peers[0], args.start_rate, 1.25, args.deadline_ms)[0]
        print(f"peak goodput {peak:.1f}/s; offering {args.multiple:g}x = {peak * args.multiple:.1f}/s for "
              f"{args.minutes:g} min to each of {', '.join(flags)}", flush=True)
        for peer in peers:
            peer.duration = args.interval
            held[peer.name] = Held(peer, peak)
        begin = time.perf_counter()
        for index in range(max(1, round(args.minutes * 60 / args.interval))):
            # A B, B A, A B, ...: a drift of the machine's speed falls on each in turn.
            for peer in peers if index % 2 == 0 else peers[::-1]:
                held[peer.name].interval(peak * args.multiple, index, time.perf_counter() - begin)
        time.sleep(1.0)  # the last calls' handlers finish and count themselves
        results = {name: one.summary() for name, one in held.items()}
    finally:
        for server in servers:
            server.stop()
    return {"peak_goodput": peak, "multiple": args.multiple, "interval_s": args.interval, "peers": results}


def report(summary: dict[str, Any], command: str, when: Any) -> list[str]:
    """results.md: per server, one line per interval, then the accounting; with variants, every server
    interval by interval against each listed before it."""
    peers = summary["peers"]
    count = len(next(iter(peers.values()))["intervals"])
    lines = [f"# Sustained overload ({when})", "", f"`{command}`: server on one core, load generator on the other, "
             f"Poisson arrivals, one text per Embed call. Peak goodput {summary['peak_goodput']:.1f}/s; offered "
             f"{summary['multiple']:g}x for {count} intervals of {summary['interval_s']:g} s"
             + (f" to each server in turn ({', '.join(peers)}; A B, B A, ...)." if len(peers) > 1 else ".")]
    for name, peer in peers.items():
        rows = peer["intervals"]
        held = sorted(r["held"] for r in rows)
        lines += ["", f"## {name}", "",
                  "| start s | offered/s | goodput/s | / peak | refused | throttled | shed | other | refusal p99 ms "
                  "| p99 OK ms | late OK | rows/batch | OK length / sent | RSS MiB | server CPU | loop | engine "
                  "| client CPU |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['t_s']:.0f} | {r['offered_rps']:.0f} | {r['goodput_rps']:.1f} | {r['held']:.2f} | "
                         f"{r['refused']} | {r['throttled']} | {r['shed']} | {sum(r['other'].values())} | "
                         f"{fmt(r['refusal_p99_ms'])} | "
                         f"{fmt(r['p99_ok_ms'])} | {r['late_ok']} | {fmt(r['rows_per_batch'])} | "
                         f"{fmt(r.get('ok_length'), 2)} | {r['rss_mib']:.1f} | "
                         f"{r['server_cpu']:.2f} | {fmt(r['loop_cpu'], 2)} | {fmt(r['engine_cpu'], 2)} | "
                         f"{r['client_cpu']:.2f} |")
        lost = peer["client_calls"] - peer["server_finished"]
        lines += ["", f"- Goodput over the peak: lowest interval {held[0]:.2f}, median {median(held):.2f}, "
                  f"highest {held[-1]:.2f}.",
                  f"- Resident memory: {peer['rss_start_mib']:.1f} MiB before the overload, "
                  f"{rows[0]['rss_mib']:.1f} after the first interval, {rows[-1]['rss_mib']:.1f} after the last.",
                  f"- Calls sent by the client: {peer['client_calls']}; finished by the server (its own count): "
                  f"{peer['server_finished']:.0f}; difference {lost:.0f}.",
                  f"- Statuses, client: {json.dumps(peer['client_codes'], sort_keys=True)}; "
                  f"server: {json.dumps({k: int(v) for k, v in peer['server_codes'].items()}, sort_keys=True)}."]
    names = list(peers)
    for first, name in ((a, b) for index, a in enumerate(names) for b in names[index + 1:]):
        ratios = [b["goodput_rps"] / a["goodput_rps"] for a, b in
                  zip(peers[first]["intervals"], peers[name]["intervals"], strict=True) if a["goodput_rps"]]
        loop = [b["loop_cpu"] - a["loop_cpu"] for a, b in
                zip(peers[first]["intervals"], peers[name]["intervals"], strict=True)
                if a["loop_cpu"] is not None and b["loop_cpu"] is not None]
        lines += ["", f"**{name} against {first}, interval by interval:** goodput ratio median "
                  f"{median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f}), higher in "
                  f"{sum(r > 1 for r in ratios)} of {len(ratios)} intervals"
                  + (f"; event loop's share {median(loop):+.3f} of the core (median difference)." if loop else ".")]
    return lines


def recorded_command(results_md: Path) -> str:
    """The command an earlier results.md names (runs before results.json kept it)."""
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else ""
    found = re.search(r"^`([^`]+)`", text, re.MULTILINE)
    return found.group(1) if found else "(command not recorded)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sustained", description=__doc__.splitlines()[0])
    parser.add_argument("--multiple", type=float, default=5.0, help="offered load as a multiple of the peak")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per load-generator run and line")
    parser.add_argument("--peak", type=float, default=0.0, help="peak goodput/s to use instead of sweeping")
    parser.add_argument("--start-rate", type=float, default=40.0, help="first rate of the sweep, calls/s")
    parser.add_argument("--texts", choices=TEXT_SETS, default="sts")
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL, help="fp32 model dir (converted if absent)")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    parser.add_argument("--server-args", default="", help="extra flags for millibatch serve (one string)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                        help="also hold this build with extra serve flags (peer millibatch+LABEL) in overload, "
                             "interval by interval beside the plain one, e.g. 'unread=--refuse-unread'; as "
                             "bench.goodput's --variant, PEER+LABEL=FLAGS runs it as that peer and flags after `--` "
                             "go to the load generator")
    parser.add_argument("--throttled", action="store_true",
                        help="also hold the same overload from a client that throttles itself (millibatch.throttle; "
                             "peer millibatch-throttled), against a server of its own")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only write results.md again from an earlier run's results.json")
    args = parser.parse_args(argv)
    if args.report is not None:
        summary = json.loads(args.report.read_text(encoding="utf-8"))
        when = Stamp(*(summary.pop(key) for key in ("date_utc", "commit", "cpu", "cores")))
        lines = report(summary, summary.get("command") or recorded_command(args.report.parent / "results.md"), when)
        (args.report.parent / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return 0
    when = stamp()
    summary = run(args)
    command = "python -m bench.sustained " + " ".join(argv if argv is not None else sys.argv[1:])
    summary["command"] = command.strip()
    lines = report(summary, command.strip(), when)
    publish(args.out, summary, lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
