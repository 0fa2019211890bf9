"""The query API: named operations over HTTP, JSON in and out, on warehouse.api (:8700).

    GET  /v1/query/<name>?param=value...   a named query (calls, trace-back, latency, ...)
    POST /v1/action/<name>  {"param": ...}  a named change (retention-apply, hold-add, ...)
    GET  /v1/export/<name>?param=value...   a file (retention-report, archive partition);
                                            its SHA-256 in X-Nimtrail-Sha256, recorded
    GET  /v1/operations                     what exists and which roles may run it

There is no way to send SQL. Requests carry `Authorization: Bearer <token>` when a tokens
file is configured; every answered or refused request is in the access log (see
operations.execute). Each request reads through its own DuckDB cursor, so queries run
while the ingest loop writes.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from nimtrail.config import Config
from nimtrail.ops import StageMetrics, health_response
from warehouse import operations
from warehouse.access import Gate, Refused
from warehouse.events import AccessRefused, QueryServed
from warehouse.operations import Context, Export
from warehouse.params import BadParameter
from warehouse.store import Store

log = logging.getLogger(__name__)
KINDS = {"query", "action", "export"}
MAX_BODY = 64 * 1024

Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, doc: object) -> Answer:
    return status, {"Content-Type": "application/json"}, orjson.dumps(doc)


class QueryApi:
    def __init__(self, config: Config, store: Store, metrics: StageMetrics,
                 healthy: Callable[[], bool], host: str | None = None, port: int | None = None):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._reply(api.answer("GET", self.path, self.headers.get("Authorization"),
                                       self.client_address[0], b""))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self.close_connection = True
                    self._reply(_json(413, {"error": "too_large", "message": "body over 64 KiB"}))
                    return
                body = self.rfile.read(length) if length else b""
                self._reply(api.answer("POST", self.path, self.headers.get("Authorization"),
                                       self.client_address[0], body))

            def _reply(self, answer: Answer) -> None:
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.config = config
        self.store = store
        self.metrics = metrics
        self.healthy = healthy
        self.gate = Gate(config.warehouse.tokens_file)
        if self.gate.open and (host or config.warehouse.api.host) not in ("127.0.0.1", "::1", "localhost"):
            log.warning("No warehouse.tokens_file: the query API answers loopback clients only")
        self._server = ThreadingHTTPServer((host or config.warehouse.api.host,
                                            config.warehouse.api.port if port is None else port), Handler)
        self._server.daemon_threads = True

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def answer(self, method: str, target: str, authorization: str | None, client: str,
               body: bytes) -> Answer:
        url = urlsplit(target)
        health = health_response(url.path, self.metrics, self.healthy)
        if health:
            status, ctype, data = health
            return status, {"Content-Type": ctype}, data
        if url.path == "/v1/operations":
            return _json(200, {"operations": [
                {"path": f"/v1/{op.path}", "params": sorted(op.params), "roles": sorted(op.roles)}
                for op in operations.OPERATIONS.values()]})
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "v1" or parts[1] not in KINDS:
            return _json(404, {"error": "not_found", "message": f"no endpoint {url.path}"})
        kind, name = parts[1], parts[2]
        wanted = "POST" if kind == "action" else "GET"
        if method != wanted:
            return _json(405, {"error": "method_not_allowed", "message": f"use {wanted} for /v1/{kind}/"})
        try:
            raw = self._params(kind, url.query, body)
        except BadParameter as e:
            return _json(400, {"error": "bad_parameter", "parameter": e.name, "message": e.detail})
        op_path = f"{kind}/{name}"
        try:
            principal = self.gate.authenticate(authorization, client)
        except Refused as e:
            AccessRefused(operation=op_path, principal="-", client=client, status=e.status,
                          why=e.message).emit(self.metrics, log)
            operations.refused(self.store, client, op_path, raw, e.status)
            return _json(e.status, {"error": "unauthorized", "message": e.message})
        ctx = Context(self.store, self.store.reader(), principal, self.config, client, self.metrics)
        try:
            result = operations.execute(ctx, kind, name, raw)
        except operations.UnknownOperation as e:
            return _json(404, {"error": "unknown_query" if kind == "query" else "unknown_operation",
                               "message": str(e)})
        except Refused as e:
            AccessRefused(operation=op_path, principal=principal.name, client=client,
                          status=e.status, why=e.message).emit(self.metrics, log)
            return _json(e.status, {"error": "forbidden", "message": e.message})
        except BadParameter as e:
            QueryServed(query=name, status="400", rows=0).emit(self.metrics, log)
            return _json(400, {"error": "bad_parameter", "parameter": e.name, "message": e.detail})
        except Exception:  # noqa: BLE001 - answer 500, keep serving
            log.exception("Operation %s failed", op_path)
            QueryServed(query=name, status="500", rows=0).emit(self.metrics, log)
            return _json(500, {"error": "internal", "message": "the operation failed; see the warehouse log"})
        finally:
            ctx.con.close()
        if isinstance(result, Export):
            QueryServed(query=name, status="200", rows=result.rows).emit(self.metrics, log)
            return 200, {"Content-Type": result.content_type,
                         "Content-Disposition": f'attachment; filename="{result.filename.rsplit("/", 1)[-1]}"',
                         "X-Nimtrail-Sha256": result.meta.get("sha256", ""),
                         "X-Nimtrail-Export-Id": result.meta.get("export_id", ""),
                         "X-Nimtrail-Rows": str(result.rows)}, result.data
        QueryServed(query=name, status="200", rows=operations.row_count(result)).emit(self.metrics, log)
        return _json(200, result)

    @staticmethod
    def _params(kind: str, query: str, body: bytes) -> dict[str, list[str]]:
        if kind != "action":
            return parse_qs(query, keep_blank_values=True)
        if not body.strip():
            return {}
        try:
            doc: Any = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise BadParameter("body", f"not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise BadParameter("body", "expected a JSON object")
        out = {}
        for key, value in doc.items():
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                raise BadParameter(key, "expected a string, number or boolean")
            out[key] = [("true" if value else "false") if isinstance(value, bool) else str(value)]
        return out

    def start(self) -> "QueryApi":
        threading.Thread(target=self._server.serve_forever, name="query-api", daemon=True).start()
        return self

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
