"""Server lifecycle: start → warm up → serve → drain on SIGTERM → exit 0.

Health answers from the first moment (NOT_SERVING, and HTTP /health 503), flips to SERVING per model
once it is warm, and back to NOT_SERVING when draining starts; new calls then get UNAVAILABLE (HTTP
503) while queued and running work finishes within `drain_seconds`. The HTTP door (service/http) runs
on the same event loop over the same data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from millibatch.engines.thread_names import GRPC_POLLER_NAME, name_os_thread
from millibatch.kserve import grpc_service_pb2, grpc_service_pb2_grpc
from millibatch.service.auth import ApiKeyAuth
from millibatch.service.dataplane import DataPlane
from millibatch.service.edge import register
from millibatch.service.first_use import resolve_model_dir
from millibatch.service.grpc_poller import poller_threads, schedule_poller
from millibatch.service.http.door import HttpDoor
from millibatch.service.inference_servicer import InferenceServicer
from millibatch.service.kserve.servicer import KServeServicer
from millibatch.service.ledger import CallLedger
from millibatch.service.metrics import Metrics
from millibatch.service.model_loading import load_model, model_specs
from millibatch.service.models_servicer import ModelsServicer
from millibatch.service.poller_pacing import PollerPacing
from millibatch.service.refusal_watch import Listener, RefusalWatch
from millibatch.service.registry import ModelRegistry, ServedModel
from millibatch.service.tls import server_credentials
from millibatch.settings import Settings
from millibatch.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc

log = logging.getLogger("millibatch.server")

#: Python's thread switch interval in the serving process (see `serve`).
GIL_SWITCH_SECONDS = 0.0005
#: After the drain, how long gRPC gets to write out the last answers before closing.
STOP_GRACE_SECONDS = 2.0

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
MODELS_SERVICE = models_pb2.DESCRIPTOR.services_by_name["Models"].full_name
#: KServe V2 / Triton protocol, served on the same port.
KSERVE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_health_name(model: str) -> str:
    """Health service name of one model (per-model readiness)."""
    return f"{INFERENCE_SERVICE}/{model}"


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """Server channel arguments: message sizes, stream limits, connection ageing and keepalive."""
    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Calls gRPC has received but Python has not yet picked up. Beyond its limits gRPC core cancels
        # them (CANCELLED, 1000 / 3000 by default); sized so a burst as large as the stream limit reaches
        # admission instead, which answers RESOURCE_EXHAUSTED with a reason.
        ("grpc.server.max_pending_requests", settings.max_concurrent_streams),
        ("grpc.server.max_pending_requests_hard_limit", settings.max_concurrent_streams),
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        # Answer client keepalive pings, but not more often than every 10 s without calls in flight.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_age_seconds > 0:
        age_ms = int(settings.max_connection_age_seconds * 1000)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", 30_000)]
    return options


class InferenceServer:
    """The millibatch process: gRPC server, health, models and their batchers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(default=settings.default_model)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        #: The watch on the refusals: poller pacing, refusing before reading, the HTTP door's retry advice
        #: (None when none is on).
        self._watch: asyncio.Task[None] | None = None
        #: Calls that reached a handler, and how they ended (checked after a drain).
        self.ledger = CallLedger()
        self.metrics = Metrics(lambda: [(m.name, m.batcher) for m in self.registry.models.values()])
        #: What every protocol does with a request; the servicers only convert to and from protobuf.
        self.plane = DataPlane(self.registry, settings, self.metrics, self.ledger)
        self.metrics.watch_calls(lambda: self.ledger.open, settings.max_concurrent_calls)
        #: Bound metrics port (0: endpoint disabled).
        self.metrics_port = 0
        #: The HTTP door (None when http_port is 0) and its bound port.
        self.http: HttpDoor | None = None
        self.http_port = 0

    async def start(self) -> None:
        """Bind and start answering (health NOT_SERVING), then load and warm every model."""
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.settings.api_keys:
            interceptors.append(ApiKeyAuth(self.settings.api_keys))
        credentials = server_credentials(self.settings)
        # gRPC's own concurrent-call limit refuses in its Cython layer, before any handler (and uncounted).
        server = grpc.aio.server(options=channel_options(self.settings), interceptors=interceptors,
                                 maximum_concurrent_rpcs=self.settings.max_concurrent_calls or None)
        # Every method of every service goes through the edge: decoding, statuses, accounting.
        inference = InferenceServicer(self.plane)
        register(server, inference_pb2_grpc.add_InferenceServicer_to_server, inference, self.plane,
                 gates=inference.gates if self.settings.refuse_unread else None)
        register(server, models_pb2_grpc.add_ModelsServicer_to_server, ModelsServicer(self.plane), self.plane)
        register(server, grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                 KServeServicer(self.plane), self.plane)
        register(server, health_pb2_grpc.add_HealthServicer_to_server, self.health, self.plane, ledger=False)
        services = [INFERENCE_SERVICE, MODELS_SERVICE, KSERVE_SERVICE, health.SERVICE_NAME]
        if self.settings.reflection:
            reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], server)
        address = f"{self.settings.host}:{self.settings.port}"
        if credentials is not None:
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"could not bind gRPC to {address}")
        for name in ("", INFERENCE_SERVICE, MODELS_SERVICE, KSERVE_SERVICE):
            await self.health.set(name, NOT_SERVING)
        await server.start()
        for thread in poller_threads():
            if thread.native_id is not None:
                name_os_thread(GRPC_POLLER_NAME, thread.native_id)
        policy = self.settings.grpc_poller_policy
        # `overload` starts as `normal` and is applied by a watch on the refusals, once the models are up.
        if not schedule_poller("normal" if policy == "overload" else policy) and policy == "batch":
            log.warning("grpc_poller_policy batch: no gRPC poller thread to schedule (none under the EventEngine, "
                        "or not on Linux)")
        self._server = server
        log.info("gRPC listening on %s:%d%s (not serving until models are warm)", self.settings.host, self.port,
                 " with TLS" if credentials is not None else "")
        log_settings(self.settings)
        if self.settings.http_port:
            door = HttpDoor(self.plane, self.settings)
            self.http_port = await door.start()
            self.http = door
            log.info("HTTP listening on %s:%d%s (/v1/embeddings, /v1/rerank, /v1/models, /health)",
                     self.settings.host, self.http_port, " with TLS" if door.tls else "")
        if self.settings.metrics_port:
            self.metrics_port = self.metrics.serve_http(self.settings.host.strip("[]"), self.settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)
        await self._load_models()
        # Everything loaded so far (models, tokenizers, gRPC, numpy, ...) lives as long as the process:
        # out of the garbage collector's sight, a full collection under load takes well under a
        # millisecond instead of about 11 ms (MiniLM) that every call in flight would wait for.
        gc.collect()
        gc.freeze()
        if self.http is not None:
            self.http.serving()
        for name in ("", INFERENCE_SERVICE, MODELS_SERVICE, KSERVE_SERVICE):
            await self.health.set(name, SERVING)
        listeners: list[Listener] = []
        if self.settings.grpc_poller_policy == "overload" and poller_threads():  # none under the EventEngine
            listeners.append(PollerPacing())
        if self.settings.refuse_unread:
            listeners.append(self._refusing)
        if self.http is not None:
            listeners.append(self._overloaded)
        if listeners:
            watch = RefusalWatch(self._refusals, listeners)
            self._watch = asyncio.get_running_loop().create_task(watch.run(), name="refusal-watch")
        log.info("serving %s (default %s)", ", ".join(self.registry.models), self.registry.default)

    def _refusing(self, engaged: bool) -> None:
        self.plane.refusing = engaged

    def _overloaded(self, engaged: bool) -> None:
        self.plane.overloaded = engaged

    def _refusals(self) -> int:
        """Calls refused for overload so far, over every model."""
        return sum(m.batcher.counters.requests_rejected for m in self.registry.models.values())

    async def _load_models(self) -> None:
        for spec in model_specs(self.settings):
            directory = await asyncio.to_thread(resolve_model_dir, spec, self.settings)
            model = await asyncio.to_thread(load_model, directory, self.settings, self.metrics.observer)
            self.registry.add(model)
            self._describe(model)
            await model.batcher.start()
            model.ready = True
            model.batcher.on_unhealthy = self._unhealthy_callback(model)
            await self.health.set(model_health_name(model.name), SERVING)
        if self.settings.default_model and self.settings.default_model not in self.registry.models:
            raise ValueError(f"default_model {self.settings.default_model!r} is not among the served models")

    def _describe(self, model: ServedModel) -> None:
        info = model.engine.info
        self.metrics.load_seconds.labels(model.name).set(model.load_seconds)
        self.metrics.model_info.labels(model.name, model.manifest.task, info.engine, info.device, info.precision).set(1)

    def _unhealthy_callback(self, model: ServedModel):  # type: ignore[no-untyped-def]
        def mark(why: str) -> None:
            model.ready = False
            log.error("model %s is unhealthy: %s", model.name, why)
            asyncio.get_running_loop().create_task(self.health.set(model_health_name(model.name), NOT_SERVING))

        return mark

    async def stop(self) -> None:
        """Drain: health NOT_SERVING, refuse new calls, finish queued work, then close the server."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._watch is not None:
            self._watch.cancel()  # gRPC's poller back to normal: the drain's answers are not delayed
        log.info("draining (up to %.1fs)", self.settings.drain_seconds)
        loop = asyncio.get_running_loop()
        drain_ends = loop.time() + self.settings.drain_seconds
        self.registry.accepting = False
        await self.health.enter_graceful_shutdown()
        await asyncio.gather(*(m.batcher.stop(self.settings.drain_seconds) for m in self.registry.models.values()))
        closing = []
        if self._server is not None:
            # Every accepted call has its answer now; the grace only lets them be written out. Calls that
            # gRPC received but had not handed to a handler when stop() begins are never dispatched and
            # end CANCELLED when the grace runs out (grpc/grpc#41785): a short grace ends that limbo soon.
            closing.append(self._server.stop(grace=min(STOP_GRACE_SECONDS, max(0.5, drain_ends - loop.time()))))
        if self.http is not None:
            closing.append(self.http.stop())  # the same: stop listening, let answers be written, close
        await asyncio.gather(*closing)
        ledger = self.ledger
        log.info("drain complete: accepted=%d answered=%d cancelled=%d open=%d",
                 ledger.accepted, ledger.answered, ledger.cancelled, ledger.open)
        for model in self.registry.models.values():
            model.engine.close()
        self.metrics.close()
        log.info("stopped")


def log_settings(settings: Settings) -> None:
    """One start-up line with the effective settings; secrets (API keys) appear masked."""
    values = settings.model_dump(mode="json")
    values["api_keys"] = f"{len(settings.api_keys)} configured"
    log.info("settings", extra={"settings": values})


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, server: InferenceServer) -> Iterator[asyncio.Event]:
    """SIGTERM/SIGINT start a drain; a second signal exits at once."""
    requested = asyncio.Event()

    def handle(signum: int) -> None:
        if requested.is_set():
            log.warning("second %s: exiting without draining", signal.Signals(signum).name)
            os._exit(1)
        log.info("received %s", signal.Signals(signum).name)
        requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield requested
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT, then drain; returns the process exit code (1 when start-up
    failed, with the reason logged in one line)."""
    # The event loop shares the GIL with gRPC's poller and the engine threads; a waiting thread gets it
    # after at most this long instead of Python's 5 ms, which bounds how late a refusal can be sent.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    server = InferenceServer(settings)
    loop = asyncio.get_running_loop()
    code = 0
    with stop_on_signals(loop, server) as requested:
        starting = asyncio.create_task(server.start())
        waiting = asyncio.create_task(requested.wait())
        await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is not None:
            waiting.cancel()
            log.error("start-up failed: %s", starting.exception())
            code = 1
        elif starting.done():
            print(f"millibatch serving on port {server.port}", flush=True)
            await waiting
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await server.stop()
    return code
