"""The HTTP door's lifecycle: an aiohttp server on the gRPC server's event loop, started before the
models load (so /health answers 503 while they warm), opened to work once they are warm, and drained
with the rest of the server.

aiohttp shares the running loop (uvloop in production), so an HTTP request and a gRPC call reach the
same batcher from the same thread. Handlers are cancelled when their client goes away, as gRPC calls
are, so a departed caller's rows are dropped before compute.
"""

from __future__ import annotations

from aiohttp import web

from millibatch.service.auth import ApiKeys
from millibatch.service.dataplane import DataPlane
from millibatch.service.http.edge import HttpEdge
from millibatch.service.http.patience import ClientPatience
from millibatch.service.http.routes import Routes
from millibatch.service.tls import server_ssl_context
from millibatch.settings import Settings

#: After the batchers have drained, how long answers already computed get to be written out.
STOP_GRACE_SECONDS = 2.0


def bind_host(host: str) -> str | None:
    """aiohttp's host for the `host` setting: every interface (IPv4 and IPv6) for "[::]" or "::", as gRPC
    binds it; otherwise the address without IPv6 brackets."""
    bare = host.strip("[]")
    return None if bare == "::" else bare


class HttpDoor:
    """The HTTP server of one InferenceServer."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.settings = settings
        #: What the door learns of callers that state no deadline, shared by the routes and the edge.
        self.patience = ClientPatience() if settings.learn_http_patience else None
        self.routes = Routes(plane, self.patience)
        self.edge = HttpEdge(plane, ApiKeys(settings.api_keys) if settings.api_keys else None, self.patience)
        # aiohttp stops reading a body past client_max_size; read_json refuses a declared length sooner.
        app = web.Application(client_max_size=settings.max_receive_message_bytes, middlewares=[self.edge.unmatched])
        self.routes.add_to(app, self.edge)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=STOP_GRACE_SECONDS)
        #: The bound port (0 until started).
        self.port = 0
        self.tls = False

    async def start(self) -> int:
        """Bind and answer (health 503, work refused) until `serving`; returns the bound port."""
        settings = self.settings
        ssl_context = server_ssl_context(settings)
        self.tls = ssl_context is not None
        await self._runner.setup()
        site = web.TCPSite(self._runner, bind_host(settings.host), settings.http_port, ssl_context=ssl_context,
                           reuse_port=settings.reuse_port or None)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise OSError(f"could not bind HTTP to {settings.host}:{settings.http_port}: {error.strerror}") from error
        self.port = int(self._runner.addresses[0][1])
        return self.port

    def serving(self) -> None:
        """Every model is warm: take work."""
        self.routes.warm = True

    async def stop(self) -> None:
        """Stop listening, give in-flight requests STOP_GRACE_SECONDS to write their answers, and close.
        Call after the batchers drained: by then every accepted request has its answer or its error."""
        await self._runner.cleanup()
