"""The one HTTP server every stage listens with: the collector's OTLP/HTTP port (plain or
TLS), the warehouse's query API and each stage's /healthz + /metrics.

The standard library's ThreadingHTTPServer gives each connection a thread and waits for it
forever, so a client that opens connections and sends nothing, or trickles its headers a
byte at a time, holds a thread each until the process runs out. Here every connection is
bounded (config `listeners`):

- `read_timeout`: a request's line, headers and body must all arrive within this many
  seconds of its first byte. It is a deadline for the whole request, not per read, so a
  byte every few seconds does not keep it open.
- `idle_timeout`: a kept-alive connection with no next request is closed after this.
- `max_connections`: past this many open connections a new one is answered 503 (on TLS,
  closed) at once, in the accepting thread, while the open ones go on being served.

Each close is counted as nimtrail_<stage>_http_connections_dropped_total{reason} and the
open connections are nimtrail_<stage>_http_connections_open.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NoReturn

from nimtrail.config import ListenerConfig
from nimtrail.ops import Event, StageMetrics, health_response

log = logging.getLogger(__name__)

# What a client past the connection cap reads: a complete answer, so it can retry.
_BUSY = b'{"error":"over_capacity","message":"too many connections; retry shortly"}\n'
OVER_CAPACITY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                 b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(_BUSY)) + _BUSY


class ConnectionDropped(Event):
    level = logging.WARNING
    message = "Closed an HTTP connection from %(peer)s: %(reason)s"
    thing = "http_connections_dropped"
    doc = "HTTP connections the server closed: read_timeout, idle_timeout or over_capacity"
    labels = ("reason",)


class IdleConnectionClosed(ConnectionDropped):
    level = logging.DEBUG  # keep-alive connections ending is routine, not news


class _DeadlineReader(io.RawIOBase):
    """The socket's read side under the connection's current deadline. Writes keep a
    per-operation timeout (set here after every read), so a client that stops reading
    its answer is let go too."""

    def __init__(self, sock: socket.socket, handler: "LimitedHandler"):
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        handler = self._handler
        left = handler.deadline - time.monotonic()
        if left <= 0:
            handler.timed_out()
        self._sock.settimeout(left)
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            handler.timed_out()
        finally:
            self._sock.settimeout(handler.server.limits.read_timeout)
        if n and handler.idle:
            handler.request_started()
        return n


class LimitedHandler(BaseHTTPRequestHandler):
    """BaseHTTPRequestHandler whose reads keep the deadlines of `Listener.limits`.

    A deadline that passes raises TimeoutError out of the read, which
    BaseHTTPRequestHandler.handle_one_request answers by closing the connection; routes
    must let it through (never turn it into an answer)."""

    server: "Listener"
    protocol_version = "HTTP/1.1"  # keep-alive; every answer here carries its Content-Length
    deadline = 0.0
    idle = True

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.read_timeout)  # bounds each write
        self.rfile.close()  # the plain socket file this replaces (it holds a socket reference)
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.idle, self.deadline = True, time.monotonic() + self.server.limits.idle_timeout
        super().handle_one_request()

    def request_started(self) -> None:
        self.idle, self.deadline = False, time.monotonic() + self.server.limits.read_timeout

    def timed_out(self) -> NoReturn:
        event = IdleConnectionClosed if self.idle else ConnectionDropped
        event(reason="idle_timeout" if self.idle else "read_timeout",
              peer=self.client_address[0]).emit(self.server.metrics, log)
        raise TimeoutError("idle connection" if self.idle else "request not received in time")

    def log_message(self, *args: object) -> None:
        pass  # requests are counted and logged by the stages' own events


class Listener(ThreadingHTTPServer):
    """A ThreadingHTTPServer with the limits above; `handler` must be a LimitedHandler."""

    daemon_threads = True
    # socketserver's default backlog of 5 overflows in any burst of connections, and the
    # kernel then drops their handshakes for the client to retry a second later: let the
    # queue hold what the cap allows, and refuse past the cap ourselves, at once.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], handler: type[LimitedHandler], limits: ListenerConfig,
                 metrics: StageMetrics):
        self.limits = limits
        self.metrics = metrics
        self._open = 0
        self._lock = threading.Lock()
        self._gauge = metrics.gauge("http_connections", "open", "HTTP connections being served")
        super().__init__(address, handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_in_thread(self, name: str) -> "Listener":
        threading.Thread(target=self.serve_forever, name=name, daemon=True).start()
        return self

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self._lock:
            full = self._open >= self.limits.max_connections
            if not full:
                self._open += 1
                self._gauge.set(self._open)
        if full:
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
            self._gauge.set(self._open)

    def _refuse(self, request: socket.socket, client_address: tuple) -> None:
        """Answer in the accepting thread without ever waiting on the client."""
        ConnectionDropped(reason="over_capacity", peer=client_address[0]).emit(self.metrics, log)
        if not isinstance(request, ssl.SSLSocket):  # before a handshake there is no way to speak
            try:
                request.setblocking(False)
                request.send(OVER_CAPACITY)
            except OSError:
                pass  # it went away, or its buffer is full: closing says enough
        self.shutdown_request(request)


def serve_ops(address: tuple[str, int], metrics: StageMetrics, healthy: Callable[[], bool],
              limits: ListenerConfig | None = None) -> Listener:
    """Start a small HTTP server with only /healthz and /metrics, for stages without an API."""
    class Handler(LimitedHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            answer = health_response(self.path.split("?")[0], metrics, healthy)
            status, ctype, body = answer or (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = Listener(address, Handler, limits or ListenerConfig(), metrics)
    return server.serve_in_thread(f"{metrics.stage}-ops")
