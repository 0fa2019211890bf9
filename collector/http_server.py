"""The collector's HTTP front door: one threaded server on the OTLP/HTTP port, to which
receivers add routes. It also answers /healthz and /metrics. With a guard (collector/auth.py)
every request but /healthz is checked before its route runs; with a TLS context
(collector/tls.py) the listener speaks only TLS. Timeouts and the connection cap are those
of every nimtrail listener (nimtrail/http_listener.py)."""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler
from typing import Callable

from collector.tls import TlsHttpServer
from nimtrail.config import ListenerConfig
from nimtrail.http_listener import LimitedHandler, Listener
from nimtrail.ops import StageMetrics, health_response

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    close: bool = False  # drop the connection (the request body was not read)


Route = Callable[[BaseHTTPRequestHandler], Response]
# Before any route: None to go on (having set `request.sender`), or the refusal to send.
Guard = Callable[[BaseHTTPRequestHandler, str], "Response | None"]


class HttpServer:
    def __init__(self, host: str, port: int, metrics: StageMetrics,
                 healthy: Callable[[], bool] = lambda: True, *, guard: Guard | None = None,
                 tls: ssl.SSLContext | None = None, limits: ListenerConfig = ListenerConfig()):
        self._routes: dict[tuple[str, str], Route] = {}
        routes = self._routes

        class Handler(LimitedHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as OTLP exporters expect

            def _dispatch(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                route = routes.get((method, path))
                refusal = guard(self, path) if guard is not None else None
                if refusal is not None:
                    response = refusal
                elif route is not None:
                    try:
                        response = route(self)
                    except TimeoutError:
                        raise  # the client was too slow: the connection is closed unanswered
                    except Exception:  # a bug must not kill the server thread silently
                        log.exception("Unhandled error serving %s %s", method, path)
                        response = Response(500, b'{"message":"internal error"}', close=True)
                elif method == "GET" and (answer := health_response(path, metrics, healthy)):
                    status, ctype, body = answer
                    response = Response(status, body, ctype)
                else:
                    response = Response(404, b'{"message":"no such endpoint"}', close=True)
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(response.body)

            def do_POST(self) -> None:  # noqa: N802
                self._dispatch("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._dispatch("GET")

        if tls is None:
            self._server = Listener((host, port), Handler, limits, metrics)
        else:
            self._server = TlsHttpServer((host, port), Handler, limits, tls, metrics)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def route(self, method: str, path: str, handler: Route) -> None:
        self._routes[(method, path)] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="collector-http",
                                        daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
