"""Turn results.json (+ raw latencies) into results.csv, RESULTS.md and PNG plots.

    python -m bench.report bench/results
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.catalog import BASELINE

CSV_FIELDS = ["peer", "pinning", "texts", "mode", "concurrency", "offered_rps", "load_fraction", "requests", "ok",
              "errors", "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "client_cpu_cores",
              "server_cpu_cores", "error_kinds", "raw"]


def primary(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Phases of the main pinning option (the first one run)."""
    return [p for p in phases if p["pinning"] == phases[0]["pinning"]] if phases else []


def saturation(phases: list[dict[str, Any]], peer: str, texts: str) -> float:
    """Best closed-loop throughput of a peer on a text set."""
    rates = [p["throughput_rps"] for p in phases if p["peer"] == peer and p["texts"] == texts and p["mode"] == "closed"]
    return max(rates, default=0.0)


def pick(phases: list[dict[str, Any]], peer: str, **match: Any) -> dict[str, Any] | None:
    """The first phase of `peer` whose fields equal `match`."""
    for phase in phases:
        if phase["peer"] == peer and all(phase.get(k) == v for k, v in match.items()):
            return phase
    return None


def fmt(value: Any, digits: int = 1) -> str:
    """A number for the table, or a dash for a missing one (None, or a phase that did not run)."""
    return "–" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def peers_of(phases: list[dict[str, Any]]) -> list[str]:
    """Peers in the order they ran."""
    return list(dict.fromkeys(p["peer"] for p in phases))


def summary_table(data: dict[str, Any]) -> list[str]:
    """Headline rows per peer: saturation, latency at c=1, p99 at 70% load, client CPU, errors."""
    phases = primary(data["phases"])
    text_sets = list(dict.fromkeys(p["texts"] for p in phases))
    head = ["peer", *[f"saturation req/s ({t})" for t in text_sets], "p50 ms c=1", "p99 ms c=1",
            "p99 ms @70% load", "max client CPU (cores)", "errors / requests"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer in peers_of(phases):
        single = pick(phases, peer, mode="closed", concurrency=1, texts=text_sets[0])
        at70 = pick(phases, peer, mode="open", load_fraction=0.7, texts=text_sets[0])
        mine = [p for p in phases if p["peer"] == peer]
        row = [peer, *[fmt(saturation(phases, peer, t)) for t in text_sets],
               fmt(single and single["p50_ms"]), fmt(single and single["p99_ms"]), fmt(at70 and at70["p99_ms"]),
               fmt(max(p["client_cpu_cores"] for p in mine), 2),
               f"{sum(p['errors'] for p in mine)} / {sum(p['requests'] for p in mine)}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def ratio_lines(data: dict[str, Any]) -> list[str]:
    """The project's goals, computed from this run: millibatch against the baseline and against Triton."""
    phases = primary(data["phases"])
    peers = peers_of(phases)
    lines = []
    for mine in (p for p in peers if p.startswith("millibatch")):
        sat = saturation(phases, mine, "sts")
        for other, goal in ((BASELINE, 10.0), ("triton-ids", 1.3), ("triton-text", 1.3)):
            theirs = saturation(phases, other, "sts")
            if other in peers and theirs > 0:
                lines.append(f"- {mine} saturation (sts) / {other}: **{sat / theirs:.2f}×** (goal ≥ {goal}×)")
        for other in ("triton-ids", "triton-text"):
            a = pick(phases, mine, mode="open", load_fraction=0.7, texts="sts")
            b = pick(phases, other, mode="open", load_fraction=0.7, texts="sts")
            if a and b and b["p99_ms"] > 0:
                lines.append(f"- {mine} p99 at 70% of own saturation / {other}'s: **{a['p99_ms'] / b['p99_ms']:.2f}×**"
                             " (goal ≤ 0.5×)")
    return lines


def pinning_lines(data: dict[str, Any]) -> list[str]:
    """Same phase under each pinning option, side by side."""
    options = list(dict.fromkeys(p["pinning"] for p in data["phases"]))
    if len(options) < 2:
        return []
    check = [p for p in data["phases"] if p["pinning"] == options[1]]
    lines = ["| peer | phase | " + " | ".join(f"{o} req/s | {o} p99 ms | {o} client CPU" for o in options) + " |",
             "|" + "---|" * (2 + 3 * len(options))]
    for phase in check:
        cells = []
        for option in options:
            same = pick(data["phases"], phase["peer"], pinning=option, mode=phase["mode"],
                        concurrency=phase["concurrency"], texts=phase["texts"])
            cells += [fmt(same and same["throughput_rps"]), fmt(same and same["p99_ms"]),
                      fmt(same and same["client_cpu_cores"], 2)]
        lines.append(f"| {phase['peer']} | {phase['mode']} c={phase['concurrency']} {phase['texts']} | "
                     + " | ".join(cells) + " |")
    return lines


def detail_table(data: dict[str, Any]) -> list[str]:
    """Every phase, one row each."""
    head = ["peer", "pinning", "texts", "load", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "client CPU",
            "server CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in data["phases"]:
        load = f"closed c={p['concurrency']}" if p["mode"] == "closed" else f"open {p['offered_rps']:.1f}/s"
        lines.append("| " + " | ".join([p["peer"], p["pinning"], p["texts"], load, fmt(p["throughput_rps"]),
                                        fmt(p["p50_ms"]), fmt(p["p90_ms"]), fmt(p["p99_ms"]), str(p["errors"]),
                                        fmt(p["client_cpu_cores"], 2), fmt(p["server_cpu_cores"], 2)]) + " |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """RESULTS.md: machine, headline table, goals, pinning comparison, every phase, skipped peers."""
    m = data["machine"]
    parts = [
        "# Benchmark results",
        "",
        f"Generated by `python -m bench.run{' --quick' if m['plan']['duration'] < 5 else ''}` on {m['date_utc']} UTC, "
        f"commit {m['commit']}: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"1-min load average {m['load_avg_1m']:.2f} at start, {m['run_seconds']:.0f} s in all. "
        f"{m['plan']['duration']:g} s per phase after {m['plan']['warmup']:g} s warm-up; one text per request; "
        "open-loop rates are fractions of each peer's own best closed-loop rate. Client CPU near 1.0 core means "
        "the load generator, not the server, was the limit.",
        "",
        *summary_table(data),
        "",
        *ratio_lines(data),
    ]
    pinning = pinning_lines(data)
    if pinning:
        parts += ["", "## Pinning: server and client on separate cores vs shared", "", *pinning]
    parts += ["", "## Every phase", "", *detail_table(data)]
    if data["skipped"]:
        parts += ["", "## Not measured", ""] + [f"- {k}: {v}" for k, v in data["skipped"].items()]
    parts += ["", "Plots: `latency_vs_throughput.png`, `latency_cdf.png`, `open_loop.png`; raw latencies in `raw/`.",
              ""]
    return "\n".join(parts)


def write_csv(data: dict[str, Any], path: Path) -> None:
    """One row per phase."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for phase in data["phases"]:
            writer.writerow({**phase, "error_kinds": json.dumps(phase["error_kinds"])})


def plot(data: dict[str, Any], out: Path) -> None:
    """latency_vs_throughput.png (closed loop), open_loop.png (p99 vs offered load), latency_cdf.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = primary(data["phases"])
    peers = peers_of(phases)
    text_sets = list(dict.fromkeys(p["texts"] for p in phases))
    fig, axes = plt.subplots(1, len(text_sets), figsize=(6.5 * len(text_sets), 4.5), squeeze=False)
    for ax, texts in zip(axes[0], text_sets, strict=True):
        for peer in peers:
            points = sorted((p for p in phases if p["peer"] == peer and p["texts"] == texts and p["mode"] == "closed"),
                            key=lambda p: p["concurrency"])
            if points:
                line, = ax.plot([p["throughput_rps"] for p in points], [p["p99_ms"] for p in points], "o-", label=peer)
                ax.plot([p["throughput_rps"] for p in points], [p["p50_ms"] for p in points], ".:",
                        color=line.get_color())
        ax.set(title=f"closed loop, {texts} texts (p99 solid, p50 dotted)", xlabel="throughput (req/s)",
               ylabel="latency (ms)", yscale="log")
        _finish_axes(ax)
    _save(plt, fig, out / "latency_vs_throughput.png")

    open_sets = [t for t in text_sets if any(p["mode"] == "open" and p["texts"] == t for p in phases)] or text_sets
    fig, axes = plt.subplots(1, len(open_sets), figsize=(6.5 * len(open_sets), 4.5), squeeze=False)
    for ax, texts in zip(axes[0], open_sets, strict=True):
        for peer in peers:
            points = sorted((p for p in phases if p["peer"] == peer and p["mode"] == "open" and p["texts"] == texts),
                            key=lambda p: p["offered_rps"])
            if points:
                ax.plot([p["offered_rps"] for p in points], [p["p99_ms"] for p in points], "o-", label=peer)
        ax.set(title=f"open loop (Poisson), {texts} texts", xlabel="offered load (req/s)",
               ylabel="p99 latency (ms)", xscale="log", yscale="log")
        _finish_axes(ax)
    _save(plt, fig, out / "open_loop.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    concurrency = max((p["concurrency"] for p in phases if p["mode"] == "closed" and p["concurrency"] <= 32), default=1)
    for peer in peers:
        phase = pick(phases, peer, mode="closed", concurrency=concurrency, texts=text_sets[0])
        raw = out / "raw" / phase["raw"] if phase else None
        if raw is not None and raw.exists():
            latencies = np.sort(np.array(json.loads(raw.read_text(encoding="utf-8"))["latencies_ms"]))
            if len(latencies):
                ax.plot(latencies, np.arange(1, len(latencies) + 1) / len(latencies), label=peer)
    ax.set(title=f"latency CDF, closed loop c={concurrency}, {text_sets[0]} texts", xlabel="latency (ms)",
           ylabel="fraction of requests", xscale="log")
    _finish_axes(ax)
    _save(plt, fig, out / "latency_cdf.png")


def _finish_axes(ax: Any) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path) -> None:
    """Read out/results.json and write the CSV, the markdown and the plots beside it."""
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    write_csv(data, out / "results.csv")
    (out / "RESULTS.md").write_text(markdown(data), encoding="utf-8")
    if data["phases"]:
        plot(data, out)


if __name__ == "__main__":
    write_report(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"))
