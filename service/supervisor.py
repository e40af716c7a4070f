"""Running servers: one (`run_server`), or N sharing one gRPC port and the HTTP door's (`supervise`).

`serve --workers N` runs N server processes on the same ports through SO_REUSEPORT. One event loop
answers a couple of thousand short calls a second (docs/GPU.md: about 2 000 on an H100's host, 5 288 with
four processes), so a GPU or a many-core machine needs several. The parent process starts the workers
(each a whole server: event loop, batcher, engine instances, model loaded), passes SIGTERM and SIGINT on
to them so each drains its own calls, and stops them all, exiting 1, if any of them exits on its own: an
orchestrator then restarts the whole. Each worker runs on its own share of the cores. The parent serves
no calls itself; with a metrics port, it serves the workers' metrics merged, each sample labelled with
its `worker`.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from millibatch.settings import Settings

log = logging.getLogger("millibatch.supervisor")

#: Seconds a worker gets beyond `drain_seconds` to exit after SIGTERM before it is killed.
EXIT_GRACE_SECONDS = 10.0
#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: Seconds the merged endpoint waits for one worker's metrics.
SCRAPE_TIMEOUT_SECONDS = 2.0


def free_port(host: str) -> int:
    """A port nothing listens on now (the workers then bind it together)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def core_shares(cores: Sequence[int], workers: int) -> list[set[int]]:
    """The cores each worker may run on: consecutive equal shares of `cores`, or all of them for every
    worker when there are fewer cores than workers. Each worker then sizes its CPU engine (one instance
    per core by default) to its share instead of all of them times `workers`."""
    ordered = sorted(cores)
    if len(ordered) < workers:
        return [set(ordered) for _ in range(workers)]
    return [set(ordered[i * len(ordered) // workers:(i + 1) * len(ordered) // workers]) for i in range(workers)]


def worker_preparation(cores: set[int] | None) -> Callable[[], None]:
    """What runs in a worker before it starts (Linux): SIGTERM when the supervisor dies, even by SIGKILL,
    so that no worker is left serving on the port without it; and its share of the cores."""

    def prepare() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if cores:
            os.sched_setaffinity(0, cores)

    return prepare


def bracketed(host: str) -> str:
    """`host` as a URL writes it (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def local_host(host: str) -> str:
    """Where this machine reaches a server bound to `host` (a wildcard means loopback)."""
    bare = host.strip("[]")
    return "127.0.0.1" if bare in ("", "0.0.0.0") else ("::1" if bare == "::" else bare)


def worker_settings(settings: Settings, metrics_port: int) -> dict[str, Any]:
    """What a worker runs with: the parent's settings, one worker, shared ports, its own metrics port,
    secrets in clear (they go to the worker on its stdin, not on its command line or environment)."""
    data = settings.model_dump(mode="json")
    data["api_keys"] = [key.get_secret_value() for key in settings.api_keys]
    data["workers"] = 1
    data["metrics_port"] = metrics_port
    data["reuse_port"] = True
    return data


def merge_metrics(texts: Sequence[str | None]) -> Iterator[Metric]:
    """The workers' metric families as one, every sample labelled `worker`; a worker that could not be
    scraped (None) shows only in `millibatch_worker_up`."""
    merged: dict[str, Metric] = {}
    up = Metric("millibatch_worker_up", "1 when the worker's metrics could be read at this scrape.", "gauge")
    for index, text in enumerate(texts):
        up.add_sample("millibatch_worker_up", {"worker": str(index)}, 0.0 if text is None else 1.0)
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, "worker": str(index)}, sample.value, sample.timestamp)
    yield up
    yield from merged.values()


class WorkersCollector(Collector):
    """Scrapes every worker's endpoint at collection time."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = urls

    def collect(self) -> Iterator[Metric]:
        return merge_metrics([self._scrape(url) for url in self._urls])

    @staticmethod
    def _scrape(url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
                return str(response.read().decode())
        except OSError:
            return None


def serve_merged_metrics(host: str, port: int, urls: list[str]) -> ThreadingHTTPServer:
    """Serve /metrics on `host:port` from a daemon thread: the workers' metrics, merged at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersCollector(urls))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not worth a log line each."""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def supervise(settings: Settings) -> int:
    """Run `settings.workers` servers on one port until SIGTERM/SIGINT or until one of them exits."""
    host = settings.host.strip("[]")
    port = settings.port or free_port(host)
    shared = settings.model_copy(update={"port": port})
    metrics_ports = [free_port(host) if settings.metrics_port else 0 for _ in range(settings.workers)]
    shares: list[set[int] | None] = [None] * settings.workers
    if hasattr(os, "sched_getaffinity"):
        shares = list(core_shares(sorted(os.sched_getaffinity(0)), settings.workers))
    workers: list[subprocess.Popen[bytes]] = []
    metrics: ThreadingHTTPServer | None = None
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(workers))
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    code = 0
    try:
        for index in range(settings.workers):
            # Its own session: a terminal's Ctrl-C or a signal to this process group reaches the
            # supervisor alone, which passes it on once (a second signal makes a worker skip its drain).
            process = subprocess.Popen([sys.executable, "-m", "millibatch.service.supervisor"], stdin=subprocess.PIPE,
                                       preexec_fn=worker_preparation(shares[index]), start_new_session=True)
            assert process.stdin is not None
            process.stdin.write(json.dumps(worker_settings(shared, metrics_ports[index])).encode())
            process.stdin.close()
            workers.append(process)
        log.info("started %d workers on port %d: pids %s, cores %s", len(workers), port, [w.pid for w in workers],
                 [sorted(share) if share else "all" for share in shares])
        if settings.metrics_port:
            urls = [f"http://{bracketed(local_host(host))}:{p}/metrics" for p in metrics_ports]
            metrics = serve_merged_metrics(host, settings.metrics_port, urls)
            log.info("merged metrics of %d workers on port %d", len(workers), settings.metrics_port)
        while not stopping.is_set():
            exited = [w for w in workers if w.poll() is not None]
            if exited:
                log.error("worker pid %d exited with %s: stopping the others", exited[0].pid, exited[0].returncode)
                code = 1
                break
            stopping.wait(0.2)
    except Exception:
        log.exception("supervisor failed: stopping the workers")
        code = 1
    finally:
        if not stop_workers(workers, settings.drain_seconds + EXIT_GRACE_SECONDS):
            code = 1
        if metrics is not None:
            metrics.shutdown()
    return code


def stop_workers(workers: list[subprocess.Popen[bytes]], grace: float) -> bool:
    """SIGTERM every running worker, wait up to `grace` seconds in all, kill what is left; True when
    every worker ended cleanly (exit 0, or SIGTERM before it could set up its handler)."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    give_up = time.monotonic() + grace
    clean = True
    for worker in workers:
        try:
            worker.wait(max(0.0, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker pid %d did not exit in time: killing it", worker.pid)
            worker.kill()
            worker.wait()
        clean = clean and worker.returncode in (0, -signal.SIGTERM)
    return clean


def run_server(settings: Settings) -> int:
    """One server process until SIGTERM/SIGINT (`serve`, or one of `serve --workers N`)."""
    from millibatch.settings import apply_grpc_experiments

    apply_grpc_experiments(settings)  # before the first import of grpc, which reads it
    from millibatch.service.logs import configure_logging
    from millibatch.service.server import serve

    configure_logging(settings.log_level, settings.log_format)
    try:
        import uvloop
    except ImportError:  # uvloop is Linux/macOS only
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


def worker_main() -> int:
    """A worker: settings as JSON on stdin, then the ordinary server on the shared port."""
    return run_server(Settings(**json.loads(sys.stdin.read())))


if __name__ == "__main__":
    sys.exit(worker_main())
