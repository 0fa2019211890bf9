"""The HTTP side of a simulated NIM: its management API and Prometheus exposition on one
loopback port, and its node's DCGM exporter on another (stdlib ThreadingHTTPServer)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

# path -> () -> (status, content type, body)
Routes = dict[str, Callable[[], tuple[int, str, bytes]]]


def json_body(status: int, doc: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(doc).encode()


def exposition(registry_of: Callable[[], Any]) -> Callable[[], tuple[int, str, bytes]]:
    """The registry is looked up per request: an upgrade swaps in the new pod's registry."""
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry_of()))


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving GET routes; `on_request(peer, method, path,
    status)` sees every request (a NIM logs them as uvicorn access lines)."""

    def __init__(self, port: int, routes: Routes,
                 on_request: Callable[[str, str, str, int], None] | None = None):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                route = routes.get(path)
                status, ctype, body = route() if route else json_body(404, {"detail": "Not Found"})
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if on_request:
                    on_request(f"{self.client_address[0]}:{self.client_address[1]}", "GET", path, status)

            def log_message(self, *_args: Any) -> None:  # the access log goes to on_request
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"sim-http-{self.port}",
                                        daemon=True)

    def start(self) -> "Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever to acknowledge: on a server that never started
        # (the fleet failed to start part way) it would wait forever.
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()
