"""Run every peer on this machine, one after another, under the same load plan; write raw data and the report.

    python -m bench.run                   # full plan (about 12-14 minutes on 2 cores)
    python -m bench.run --quick           # smoke plan (about 2 minutes)
    python -m bench.run --peers millibatch --millibatch int8=models/minilm-int8

Each peer runs as its own process, the load generator as another; with two or more cores the server is
pinned to core 0 and the load generator to the rest ("split"), and "shared" lets both float on all cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers.catalog import ALL_PEERS, PeerContext, launch
from bench.processes import READY_SECONDS, Cores, Server, cores_for, process_cpu, run_loadgen, start_server, wait_ready
from bench.texts import DEFAULT_STSB, TEXT_SETS, stsb_sentences, text_set
from millibatch.engines.convert.quantize import cpuinfo_value

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
TRITON_PYTHON = ROOT / "build" / "bench-triton-venv" / "bin" / "python"
INFINITY_COMMAND = ROOT / "build" / "bench-infinity-venv" / "bin" / "infinity_emb"


@dataclass
class Plan:
    """Which phases run against each peer."""

    text_sets: list[str]
    concurrencies: list[int]
    open_fractions: dict[str, list[float]]
    """Open-loop rates per text set, as fractions of the peer's best closed-loop rate on that set."""
    duration: float
    warmup: float
    pinnings: list[str]
    check_concurrency: int = 32
    timeout: float = 10.0


FULL = Plan(text_sets=list(TEXT_SETS), concurrencies=[1, 8, 32, 128],
            open_fractions={"sts": [0.25, 0.5, 0.7, 0.9, 1.1], "long": [0.5, 0.7, 0.9]},
            duration=6.0, warmup=1.0, pinnings=["split", "shared"])
QUICK = Plan(text_sets=["sts"], concurrencies=[1, 32], open_fractions={"sts": [0.7]}, duration=2.0, warmup=0.5,
             pinnings=["split"])


@dataclass
class Session:
    """One benchmark run: where things go and what was measured."""

    plan: Plan
    out: Path
    texts: dict[str, Path]
    ctx: PeerContext
    phases: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def raw(self) -> Path:
        return self.out / "raw"

    def phase(self, server: Server, cores: Cores, text_name: str, flags: list[str], tag: str) -> dict[str, Any]:
        """One measured phase; raw latencies to raw/, the summary (with server CPU) kept."""
        raw_file = self.raw / f"{server.launch.name}-{cores.pinning}-{text_name}-{tag}.json"
        cpu_before, wall_before = process_cpu(server.process.pid), time.perf_counter()
        limit = self.plan.duration + self.plan.warmup + self.plan.timeout + 60
        result = run_loadgen(server.launch, cores, self.texts[text_name],
                             [*flags, "--duration", str(self.plan.duration), "--warmup", str(self.plan.warmup),
                              "--timeout", str(self.plan.timeout)], raw_file, limit)
        assert result is not None
        wall = time.perf_counter() - wall_before
        result.pop("latencies_ms", None)
        # Server CPU covers warm-up too (it cannot be split out from here); it is a load indicator, not a cost.
        result.update(peer=server.launch.name, pinning=cores.pinning, texts=text_name, raw=raw_file.name,
                      server_cpu_cores=(process_cpu(server.process.pid) - cpu_before) / wall)
        print(f"  {tag:>10} {text_name:>5}: {result['throughput_rps']:8.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
              f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}  client cpu {result['client_cpu_cores']:.2f}"
              f"  server cpu {result['server_cpu_cores']:.2f}", flush=True)
        self.phases.append(result)
        return result

    def bench_peer(self, name: str, model_dir: Path, pinning: str, check_only: bool) -> None:
        """Start one peer, wait until it answers, run its phases, stop it."""
        cores = cores_for(pinning)
        try:
            spec = launch(name, model_dir, self.ctx)
        except RuntimeError as error:
            self.skipped[name] = str(error)
            print(f"{name}: skipped: {error}", flush=True)
            return
        print(f"{name} ({cores.pinning}: server cores {sorted(cores.server)}, client cores {sorted(cores.client)})",
              flush=True)
        server = start_server(spec, cores, self.raw)
        try:
            wait_ready(server, cores, self.texts["sts"], READY_SECONDS)
            if check_only:
                for text_name in self.plan.text_sets[:1]:
                    self.phase(server, cores, text_name,
                               ["--mode", "closed", "--concurrency", str(self.plan.check_concurrency)],
                               f"c{self.plan.check_concurrency}")
                return
            for text_name in self.plan.text_sets:
                saturation = 0.0
                for concurrency in self.plan.concurrencies:
                    result = self.phase(server, cores, text_name, ["--mode", "closed", "--concurrency",
                                                                   str(concurrency)], f"c{concurrency}")
                    saturation = max(saturation, result["throughput_rps"])
                # Open-loop rates are fractions of this peer's own closed-loop best on the same texts.
                for fraction in self.plan.open_fractions.get(text_name, []):
                    rate = max(0.5, saturation * fraction)
                    result = self.phase(server, cores, text_name, ["--mode", "open", "--rate", f"{rate:.3f}"],
                                        f"open{round(fraction * 100)}")
                    result["load_fraction"] = fraction
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            log = server.log_path.name if server.log_path is not None else "none"
            self.skipped[f"{name} ({cores.pinning})"] = f"{error} (server log: {log})"
            print(f"{name}: failed: {error}", flush=True)
        finally:
            server.stop()


def machine_info(plan: Plan) -> dict[str, Any]:
    """Where and when this ran, and how busy the machine was at the start (other work skews numbers)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
            "cpu": cpuinfo_value("model name"), "cores": len(os.sched_getaffinity(0)),
            "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(), "commit": commit,
            "plan": plan.__dict__}


def imports(python: Path, modules: str) -> bool:
    """Whether the environment of `python` imports `modules` (comma-separated)."""
    return subprocess.run([str(python), "-c", f"import {modules}"], capture_output=True, check=False).returncode == 0


def triton_env(path: str | None) -> tuple[str | None, str | None]:
    """The Triton environment's Python and its libpython folder, or (None, None) where it is missing."""
    python = Path(path) if path else TRITON_PYTHON
    if not python.exists():
        return None, None
    # A half-built environment (pip failed) must count as missing, not fail each Triton peer slowly.
    if not imports(python, "pytriton, tritonclient.grpc.aio"):
        return None, None
    libdir = subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return str(python), libdir or sysconfig.get_config_var("LIBDIR")


def infinity_env(path: str | None, onnx: bool = False) -> str | None:
    """The infinity-emb environment's `infinity_emb` command, or None where it is missing or half-built, or,
    with `onnx`, built before it held infinity's ONNX engine (optimum-onnx)."""
    command = Path(path) if path else INFINITY_COMMAND
    if not command.exists():
        return None
    modules = "infinity_emb, sentence_transformers" + (", optimum.onnxruntime" if onnx else "")
    return str(command) if imports(command.parent / "python", modules) else None


def ensure_model(model_dir: Path) -> Path:
    """Convert all-MiniLM-L6-v2 into `model_dir` once (about 20 s) unless it is already a model directory."""
    if not (model_dir / "manifest.json").exists():
        print(f"converting all-MiniLM-L6-v2 into {model_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "millibatch", "convert", "all-MiniLM-L6-v2", "-o", str(model_dir),
                        "--force"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return model_dir


def sibling_precisions(model_dir: Path) -> list[tuple[str, Path]]:
    """Other model dirs beside `model_dir` converted from the same checkpoint at another precision (int8,
    fp16, ...), so a run picks them up as millibatch-<precision> without flags."""
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    found = []
    for candidate in sorted(model_dir.parent.glob("*/manifest.json")):
        other = json.loads(candidate.read_text(encoding="utf-8"))
        if (candidate.parent != model_dir and other.get("source_hash") == manifest.get("source_hash")
                and other.get("task") == manifest.get("task") and other.get("precision") != manifest.get("precision")):
            found.append((f"millibatch-{other.get('precision')}", candidate.parent))
    return found


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the benchmark runner."""
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke plan: short phases, fewer of them")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated peers to run")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL, help="fp32 model dir (converted if absent)")
    parser.add_argument("--millibatch", action="append", default=[], metavar="LABEL=DIR",
                        help="also serve this model dir as peer millibatch-LABEL (e.g. int8=models/minilm-int8); "
                             "without it, other precisions of the model beside --model-dir are found by manifest")
    parser.add_argument("--pinning", choices=("split", "shared", "both"), default=None,
                        help="split: server core 0, client other cores; both: full plan split + a check shared")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured phase")
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB, help="STS-B test TSV")
    parser.add_argument("--triton-python", default=None, help="Python of the environment with nvidia-pytriton")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results[/quick])")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the plan against every chosen peer and write results.json, results.csv, RESULTS.md and plots."""
    args = build_parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration=args.duration, warmup=min(plan.warmup, args.duration / 4))
    if args.pinning is not None:
        plan = dataclasses.replace(plan, pinnings=["split", "shared"] if args.pinning == "both" else [args.pinning])
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    sentences = stsb_sentences(args.stsb)
    texts = {}
    for name in plan.text_sets:
        texts[name] = out / "raw" / f"texts-{name}.json"
        texts[name].write_text(json.dumps(text_set(name, sentences)), encoding="utf-8")
    if "sts" not in texts:
        raise SystemExit("the 'sts' text set is needed for readiness probes")
    model_dir = ensure_model(args.model_dir.resolve())
    triton_python, triton_libdir = triton_env(args.triton_python)
    session = Session(plan, out, texts, PeerContext(model_dir, len(cores_for(plan.pinnings[0]).server),
                                                    triton_python, triton_libdir))
    peers = [(p.strip(), model_dir) for p in args.peers.split(",") if p.strip()]
    peers += [(f"millibatch-{label}", Path(folder).resolve())
              for label, _, folder in (item.partition("=") for item in args.millibatch)]
    if any(name == "millibatch" for name, _ in peers) and not args.millibatch:
        peers += sibling_precisions(model_dir)
    info = machine_info(plan)
    started = time.perf_counter()
    for index, pinning in enumerate(plan.pinnings):
        session.ctx.threads = len(cores_for(pinning).server)
        for name, folder in peers:
            session.bench_peer(name, folder, pinning, check_only=index > 0)
    info["run_seconds"] = round(time.perf_counter() - started, 1)
    summary = {"machine": info, "skipped": session.skipped, "phases": session.phases}
    (out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    from bench.report import write_report

    write_report(out)
    print(f"wrote {out}/RESULTS.md, results.json, results.csv and plots in {info['run_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
