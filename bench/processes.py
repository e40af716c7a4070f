"""Child processes of the benchmarks, started one way everywhere: a server (`millibatch serve` or a peer)
on a free loopback port, the load generator (bench/loadgen.py) against it, each its own process and, with
a `Cores`, pinned to its own cores; readiness is a real request; stopping is SIGTERM, then SIGKILL.

    spec = serve_launch(model_dir, ["--batch-policy", "deadline"])   # or bench.peers.catalog.launch()
    with running_server(spec, texts_file) as server:
        result = run_loadgen(server.launch, None, texts_file, ["--mode", "closed", "--duration", "5"], out, 60)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: How long a server may take to answer its first request (model load and start-up profiling included).
READY_SECONDS = 240.0
#: How long a stopped server may drain its in-flight calls before it is killed.
STOP_GRACE_SECONDS = 30.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Launch:
    """One server to start: its command, and how the load generator talks to it."""

    #: Name of the server in results and log files.
    name: str
    #: Command line of the server process.
    command: list[str]
    #: The load generator's --protocol for it.
    protocol: str
    #: host:port the load generator calls.
    target: str
    #: Python that runs the load generator (the Triton peers' client libraries live in their own venv).
    python: str = sys.executable
    #: Extra environment of the server process.
    env: dict[str, str] = field(default_factory=dict)
    #: Extra load generator flags for this server (Triton's model name, the client-side tokenizer).
    loadgen_flags: list[str] = field(default_factory=list)
    #: Prometheus text endpoint of the server (millibatch's and Triton's own), where it has one.
    metrics_url: str | None = None
    #: The checkout the server runs from (its cwd and PYTHONPATH): another build for compare_builds.
    cwd: Path = ROOT


def serve_launch(model: Path, flags: Sequence[str], *, name: str = "millibatch", port: int | None = None,
                 metrics: bool = False, repo: Path = ROOT, env: dict[str, str] | None = None) -> Launch:
    """`millibatch serve --model MODEL FLAGS` on loopback, on `port` or a free one, from the checkout at
    `repo`; with `metrics`, its Prometheus endpoint on a free port too (else the endpoint is off)."""
    port = free_port() if port is None else port
    metrics_port = free_port() if metrics else 0
    command = [sys.executable, "-m", "millibatch", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", str(metrics_port), *flags]
    # The HTTP door off (by environment: a checkout that predates it ignores the variable, not a flag).
    return Launch(name, command, "millibatch", f"127.0.0.1:{port}", env={"MILLIBATCH_HTTP_PORT": "0", **(env or {})},
                  cwd=repo, metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if metrics else None)


@dataclass
class Cores:
    """CPU sets for the server and the load generator under one pinning option."""

    pinning: str
    server: set[int]
    client: set[int]


def cores_for(pinning: str) -> Cores:
    """Split: server on the first core, client on the others. Shared (or one core only): both on all."""
    available = sorted(os.sched_getaffinity(0))
    if pinning == "split" and len(available) >= 2:
        return Cores("split", {available[0]}, set(available[1:]))
    return Cores("shared", set(available), set(available))


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to `cpus`; None leaves it where the scheduler puts it."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and all its children (Triton runs a server and backend stubs)."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system + getattr(times, "children_user", 0.0)
        return total
    except psutil.Error:
        return 0.0


def cpu_ticks(cpus: set[int], stat: str | None = None) -> tuple[int, int]:
    """(stolen, all) clock ticks of `cpus` so far, from /proc/stat (or `stat`, its text). Stolen ticks are
    those the hypervisor gave the virtual CPU to someone else: on a VM they explain a slow phase that
    neither the server's nor the client's own CPU shows. (0, 0) where /proc/stat cannot be read."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text(encoding="ascii")
        except OSError:
            return 0, 0
    stolen = total = 0
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user.
        ticks = [int(value) for value in fields[:8]]
        stolen += ticks[7] if len(ticks) > 7 else 0
        total += sum(ticks)
    return stolen, total


def stolen_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of the cores' time stolen between two `cpu_ticks` readings of them (None if no time passed)."""
    elapsed = after[1] - before[1]
    return (after[0] - before[0]) / elapsed if elapsed > 0 else None


@dataclass
class Server:
    """A running server process."""

    launch: Launch
    process: subprocess.Popen[bytes]
    #: Its stdout and stderr, or None where they were discarded.
    log_path: Path | None

    def stop(self) -> None:
        """SIGTERM (a server drains on it), then SIGKILL if it has not exited within STOP_GRACE_SECONDS."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def with_python_path(checkout: Path) -> str:
    """PYTHONPATH for a child: `checkout` first, then whatever this process was given (packages installed
    beside the interpreter's own, such as a GPU machine's onnxruntime-gpu in a --target folder)."""
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(checkout), *(p for p in inherited.split(os.pathsep) if p)])


def start_server(spec: Launch, cores: Cores | None, logs: Path | None) -> Server:
    """Start the server, pinned to `cores.server` (with as many OpenMP threads) or unpinned without
    cores; its output goes to a log file in the folder `logs`, or nowhere without one."""
    env = {**os.environ, "PYTHONPATH": with_python_path(spec.cwd)}
    if cores is not None:
        env["OMP_NUM_THREADS"] = str(len(cores.server))
    env.update(spec.env)
    log_path = None if logs is None else logs / f"{spec.name}{'' if cores is None else '-' + cores.pinning}.log"
    with contextlib.ExitStack() as stack:
        output = subprocess.DEVNULL if log_path is None else stack.enter_context(log_path.open("wb"))
        process = subprocess.Popen(spec.command, cwd=spec.cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=_pinned(None if cores is None else cores.server))
    return Server(spec, process, log_path)


def run_loadgen(spec: Launch, cores: Cores | None, texts: Path, flags: list[str], out: Path | None,
                timeout: float) -> dict[str, Any] | None:
    """Run the load generator against `spec` (pinned to `cores.client`, if given) with `flags`; its
    result JSON (written to `out`), or None without `out` (a probe)."""
    command = [spec.python, "-m", "bench.loadgen", "--protocol", spec.protocol, "--target", spec.target,
               "--texts", str(texts), *spec.loadgen_flags, *flags]
    if out is not None:
        command += ["--out", str(out)]
    # Always this checkout's load generator, whichever build the server runs from.
    env = {**os.environ, "PYTHONPATH": with_python_path(ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                               preexec_fn=_pinned(None if cores is None else cores.client), check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    if out is None:
        return None
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def wait_ready(server: Server, cores: Cores | None, texts: Path, wait: float) -> None:
    """Probe with real requests until the server answers; give up early if its process has exited."""
    give_up = time.monotonic() + wait
    while True:
        try:
            run_loadgen(server.launch, cores, texts, ["--mode", "probe", "--duration", "5"], None, 60)
            return
        except RuntimeError as error:
            if server.process.poll() is not None:
                log = f" (log: {server.log_path})" if server.log_path is not None else ""
                raise RuntimeError(f"server exited with {server.process.returncode} before answering{log}") from error
            if time.monotonic() > give_up:
                raise


@contextlib.contextmanager
def running_server(spec: Launch, texts: Path, cores: Cores | None = None, logs: Path | None = None,
                   wait: float = READY_SECONDS) -> Iterator[Server]:
    """Start the server, wait until it answers a request made of `texts`, yield it, stop it."""
    server = start_server(spec, cores, logs)
    try:
        wait_ready(server, cores, texts, wait)
        yield server
    finally:
        server.stop()


def worktree(ref: str, root: Path) -> Path:
    """A detached checkout of git `ref` under `root`, with this checkout's .venv linked in: another build
    of the server to run beside this one (`serve_launch(..., repo=...)`)."""
    path = root / ref.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), ref], cwd=ROOT, check=True)
    (path / ".venv").symlink_to(ROOT / ".venv")
    return path


def remove_worktree(path: Path) -> None:
    """Undo `worktree`."""
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


@contextlib.contextmanager
def checkouts(refs: Sequence[str], prefix: str) -> Iterator[dict[str, Path]]:
    """A `worktree` of each git ref (a benchmark's `--baseline`), by ref, each in a fresh temporary folder
    named with `prefix`; every one removed on exit."""
    trees: dict[str, Path] = {}
    try:
        for ref in refs:
            trees[ref] = worktree(ref, Path(tempfile.mkdtemp(prefix=prefix)))
        yield trees
    finally:
        for path in trees.values():
            remove_worktree(path)
