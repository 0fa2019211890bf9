"""A real HTTP receiver shaped like Alertmanager's v2 API (`POST /api/v2/alerts`, 200) that
also takes webhook POSTs on any other path, and records what it was sent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ALERTS_PATH = "/api/v2/alerts"
HOOK_PATH = "/hook"


class AlertReceiver:
    """Serves on `port` once started; `stop()` takes it down (its port then refuses)."""

    def __init__(self, port: int):
        self.port = port
        self.posts: list[tuple[str, dict[str, str], Any]] = []  # (path, headers, body)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "AlertReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.posts.append((self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert POSTed to the Alertmanager path, in order."""
        with self._lock:
            return [a for path, _h, body in self.posts if path == ALERTS_PATH for a in body]

    def hooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for path, _h, body in self.posts if path == HOOK_PATH]

    def headers(self) -> list[dict[str, str]]:
        with self._lock:
            return [h for _p, h, _b in self.posts]
