"""The query API: named queries over HTTP, JSON in and out, on warehouse.api (:8700).

`GET /v1/query/<name>?param=value...` runs one of `queries.QUERIES`; there is no way to
send SQL. Each request reads through its own DuckDB cursor, so queries run while the
ingest loop writes.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from nimtrail.ops import StageMetrics, health_response
from warehouse.events import QueryServed
from warehouse.params import BadParameter, Params
from warehouse.queries import QUERIES
from warehouse.store import Store

log = logging.getLogger(__name__)
PREFIX = "/v1/query/"


def _json(status: int, doc: object) -> tuple[int, str, bytes]:
    return status, "application/json", orjson.dumps(doc)


class QueryApi:
    def __init__(self, host: str, port: int, store: Store, metrics: StageMetrics,
                 healthy: Callable[[], bool]):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                status, ctype, body = api.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.store = store
        self.metrics = metrics
        self.healthy = healthy
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def answer(self, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        answer = health_response(url.path, self.metrics, self.healthy)
        if answer:
            return answer
        if not url.path.startswith(PREFIX):
            return _json(404, {"error": "not_found", "message": f"no endpoint {url.path}"})
        name = url.path[len(PREFIX):]
        if name not in QUERIES:
            return _json(404, {"error": "unknown_query",
                               "message": f"no query {name!r}; known: {', '.join(sorted(QUERIES))}"})
        query, allowed = QUERIES[name]
        try:
            params = Params(parse_qs(url.query, keep_blank_values=True), allowed)
            result = query(self.store.reader(), params)
        except BadParameter as e:
            QueryServed(query=name, status="400", rows=0).emit(self.metrics, log)
            return _json(400, {"error": "bad_parameter", "parameter": e.name, "message": e.detail})
        except Exception:  # noqa: BLE001 - answer 500, keep serving
            log.exception("Query %s failed", name)
            QueryServed(query=name, status="500", rows=0).emit(self.metrics, log)
            return _json(500, {"error": "internal", "message": "the query failed; see the warehouse log"})
        QueryServed(query=name, status="200", rows=len(result.get("rows", ()))).emit(self.metrics, log)
        return _json(200, result)

    def start(self) -> "QueryApi":
        threading.Thread(target=self._server.serve_forever, name="query-api", daemon=True).start()
        return self

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
