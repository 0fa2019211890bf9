"""The query API: named operations over HTTP, JSON in and out, on warehouse.api (:8700).

    GET  /v1/query/<name>?param=value...   a named query (calls, trace-back, latency, ...)
    POST /v1/action/<name>  {"param": ...}  a named change (retention-apply, hold-add, ...)
    GET  /v1/export/<name>?param=value...   a file (retention-report, archive partition);
                                            its SHA-256 in X-Nimtrail-Sha256, recorded
    GET  /v1/operations                     what exists and which roles may run it

There is no way to send SQL. Requests carry `Authorization: Bearer <token>` when a tokens
file is configured; from an address in `warehouse.trusted_proxies`, also the person behind
the token (`X-Forwarded-Email`, see nimtrail.people), logged next to it. Every answered or refused request is in the access log (see
operations.execute), refusals under the principal the request presented (`invalid_token`
for a token nobody issued, `anonymous` for none): 400, 401, 403, 404, 405, 413, and the
414 / 501 / 431 that http.server itself answers. Each request reads through its own DuckDB
cursor, so queries run while the ingest loop writes. /healthz and /metrics are not logged.
"""

from __future__ import annotations

import hmac
import logging
from functools import partial
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from nimtrail.config import Config
from nimtrail.http_listener import LimitedHandler, Listener
from nimtrail.ops import StageMetrics, health_response
from nimtrail.people import ProxyTrust
from warehouse import front, operations, shard_reads, shards
from warehouse.access import Gate, Refused
from warehouse.events import AccessRefused, QueryServed
from warehouse.operations import Context, Export
from warehouse.params import BadParameter
from warehouse.store import Store

log = logging.getLogger(__name__)
KINDS = {"query", "action", "export"}
MAX_BODY = 64 * 1024
LOGGED_TARGET_CHARS = 256  # of a path that names no operation (a 414's can be 64 KiB)

Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, doc: object) -> Answer:
    return status, {"Content-Type": "application/json"}, orjson.dumps(doc)


class QueryApi:
    def __init__(self, config: Config, store: Store, metrics: StageMetrics,
                 healthy: Callable[[], bool], host: str | None = None, port: int | None = None):
        api = self

        class Handler(LimitedHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._reply(api.answer("GET", self.path, self.headers.get("Authorization"),
                                       self.client_address[0], b"", self._person()))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self.close_connection = True  # the body stays unread
                    self._reply(api.refuse(413, "too_large", "body over 64 KiB", self.path,
                                           self.headers.get("Authorization"), self.client_address[0],
                                           person=self._person()))
                    return
                body = self.rfile.read(length) if length else b""
                self._reply(api.answer("POST", self.path, self.headers.get("Authorization"),
                                       self.client_address[0], body, self._person()))

            def _person(self) -> str | None:
                return api.proxies.person(self.headers, self.client_address[0])

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """http.server's own refusals (414 request line too long, 501 no such method,
                431 headers too large, 400 malformed request) are refusals like any other:
                answered in JSON and in the access log. A 414's headers are never read (its
                request line has no end in sight), so it is logged as `anonymous`."""
                headers = getattr(self, "headers", None)  # not parsed before a 414
                target = getattr(self, "path", None) or _request_target(self.raw_requestline)
                self.close_connection = True
                why = message or explain or HTTPStatus(code).description
                self._reply(api.refuse(code, _ERRORS.get(code, "bad_request"), why,
                                       target, headers.get("Authorization") if headers else None,
                                       self.client_address[0], person=self._person() if headers else None))

            def _reply(self, answer: Answer) -> None:
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

        self.config = config
        self.sharded = shards.sharded(config)
        self.shard_token = shards.token(config) if self.sharded else ""
        self.store = store
        self.metrics = metrics
        self.healthy = healthy
        self.gate = Gate(config.warehouse.tokens_file)
        self.proxies = ProxyTrust(config.warehouse.trusted_proxies, config.warehouse.person_headers)
        if self.gate.open and (host or config.warehouse.api.host) not in ("127.0.0.1", "::1", "localhost"):
            log.warning("No warehouse.tokens_file: the query API answers loopback clients only")
        self._server = Listener((host or config.warehouse.api.host,
                                 config.warehouse.api.port if port is None else port), Handler,
                                config.listeners, metrics)

    @property
    def port(self) -> int:
        return self._server.port

    def answer(self, method: str, target: str, authorization: str | None, client: str,
               body: bytes, person: str | None = None) -> Answer:
        """`person`: whom a trusted proxy named (already checked against trusted_proxies)."""
        url = urlsplit(target)
        health = health_response(url.path, self.metrics, self.healthy)
        if health:
            status, ctype, data = health
            return status, {"Content-Type": ctype}, data
        if url.path.startswith("/v1/shard/") and self.sharded:
            return self._shard_read(method, url.path[len("/v1/shard/"):], authorization, body)
        if self.sharded and self.config.warehouse.shard:
            return self.refuse(404, "not_the_front", f"this is warehouse {shards.name(self.config)}: it "
                               "answers the query front only; ask the query API of shard 0", target,
                               authorization, client, person=person)
        if url.path == "/v1/operations":
            return _json(200, {"operations": [
                {"path": f"/v1/{op.path}", "params": sorted(op.params), "roles": sorted(op.roles)}
                for op in operations.OPERATIONS.values()]})
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "v1" or parts[1] not in KINDS:
            return self.refuse(404, "not_found", f"no endpoint {url.path}", target, authorization, client,
                               person=person)
        kind, name = parts[1], parts[2]
        wanted = "POST" if kind == "action" else "GET"
        if method != wanted:
            return self.refuse(405, "method_not_allowed", f"use {wanted} for /v1/{kind}/", target,
                               authorization, client, headers={"Allow": wanted}, person=person)
        try:
            raw = self._params(kind, url.query, body)
        except BadParameter as e:
            return self.refuse(400, "bad_parameter", e.detail, target, authorization, client,
                               parameter=e.name, person=person)
        op_path = f"{kind}/{name}"
        try:
            principal = self.gate.authenticate(authorization, client)
        except Refused as e:
            return self.refuse(e.status, "unauthorized" if e.status == 401 else "forbidden", e.message,
                               target, authorization, client, raw, person=person)
        principal = principal.for_person(person)
        ctx = Context(self.store, self.store.reader(), principal, self.config, client, self.metrics)
        if self.sharded:
            ctx.shards = front.Shards(self.config, self.shard_token, partial(
                shard_reads.answer, self.store, ctx.con, self.config))
        try:
            result = operations.execute(ctx, kind, name, raw)
        except operations.UnknownOperation as e:
            return self.refuse(404, "unknown_query" if kind == "query" else "unknown_operation", str(e),
                               target, authorization, client, raw, person=person)
        except Refused as e:
            AccessRefused(operation=op_path, principal=principal.name, client=client,
                          status=e.status, why=e.message).emit(self.metrics, log)
            return _json(e.status, {"error": "forbidden", "message": e.message})
        except BadParameter as e:
            QueryServed(query=name, status="400", rows=0).emit(self.metrics, log)
            return _json(400, {"error": "bad_parameter", "parameter": e.name, "message": e.detail})
        except front.NotOverShards as e:
            QueryServed(query=name, status="501", rows=0).emit(self.metrics, log)
            return _json(501, {"error": "not_over_shards", "message": str(e)})
        except front.ShardUnavailable as e:
            log.warning("%s", e)
            QueryServed(query=name, status="503", rows=0).emit(self.metrics, log)
            return _json(503, {"error": "shard_unavailable", "message": str(e)})
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

    def _shard_read(self, method: str, read: str, authorization: str | None, body: bytes) -> Answer:
        """A part of an operation for the front (warehouse/shard_reads.py): only with the
        shards' token, and not in the access log (the front logs the request it serves)."""
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), self.shard_token.encode()):
            return _json(401, {"error": "unauthorized", "message": "the shards' token is required"})
        if method != "POST":
            return _json(405, {"error": "method_not_allowed", "message": "use POST for /v1/shard/"})
        try:
            args = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as e:
            return _json(400, {"error": "bad_request", "message": f"not JSON: {e}"})
        con = self.store.reader()
        try:
            return _json(200, shard_reads.answer(self.store, con, self.config, read, args))
        except (shard_reads.ShardReadError, BadParameter, KeyError, TypeError) as e:
            return _json(400, {"error": "bad_request", "message": f"{type(e).__name__}: {e}"})
        except Exception:  # noqa: BLE001 - answer 500, keep serving
            log.exception("Shard read %s failed", read)
            return _json(500, {"error": "internal", "message": "the shard read failed; see the warehouse log"})
        finally:
            con.close()

    def refuse(self, status: int, error: str, message: str, target: str, authorization: str | None,
               client: str, raw: dict[str, list[str]] | None = None, *, parameter: str | None = None,
               headers: dict[str, str] | None = None, person: str | None = None) -> Answer:
        """The answer to a request refused before any operation ran, logged in the access log
        under whoever the request claimed to be."""
        principal = self.gate.identify(authorization, client).for_person(person)
        url = urlsplit(target)
        operation = _operation(url.path)
        AccessRefused(operation=operation, principal=principal.name, client=client, status=status,
                      why=message).emit(self.metrics, log)
        try:
            operations.refused(self.store, principal, client, operation,
                               parse_qs(url.query, keep_blank_values=True) if raw is None else raw, status)
        except Exception:  # noqa: BLE001 - a refusal reveals nothing; it is answered regardless
            log.exception("Could not log the refusal of %s in the access log", operation)
        doc = {"error": error, "message": message}
        if parameter is not None:
            doc["parameter"] = parameter
        status_, headers_, body = _json(status, doc)
        return status_, {**headers_, **(headers or {})}, body

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
        self._server.serve_in_thread("query-api")
        return self

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_ERRORS = {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large", 501: "not_implemented"}


def _operation(path: str) -> str:
    """The access log's `operation` of a request: `kind/name` when the path names one (even
    an unknown one), else the path itself, cut short."""
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "v1" and parts[1] in KINDS:
        return f"{parts[1]}/{parts[2]}"[:LOGGED_TARGET_CHARS]
    return path[:LOGGED_TARGET_CHARS] or "-"


def _request_target(raw_requestline: bytes) -> str:
    """The target of a request line http.server did not parse (too long, malformed)."""
    words = raw_requestline[:LOGGED_TARGET_CHARS + 64].decode("latin-1").split()
    return words[1] if len(words) > 1 else ""
