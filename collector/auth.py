"""Who may send to the collector: bearer tokens on OTLP/HTTP, /v1/nimlogs and OTLP/gRPC.

`collector.auth.tokens_file` is a mounted secret in one of two shapes:

    # one token per line (blank lines and # comments are skipped)
    3q2+7w...long-random-token
    # or a YAML mapping: token (or "sha256:<hex>" of it) -> the sender's name
    "3q2+7w...long-random-token": nim-llama
    "sha256:5e8848...": fluent-bit

A request must carry `Authorization: Bearer <token>` (gRPC: metadata `authorization`).
Only SHA-256 digests of the tokens are kept in memory, and a presented token is compared
with every one of them in constant time. The file is re-read when it changes (checked at
most once a second); an invalid or empty file is reported and the previous tokens stay.

A refused request is answered 401 with `WWW-Authenticate: Bearer` (gRPC UNAUTHENTICATED),
counted as nimtrail_collector_unauthenticated_requests_total{receiver, reason} and logged
with the peer; its body is never stored (not even in the dead-letter topic). An accepted
request's sender name travels with what it sent as the Kafka header `nimtrail.sender`.
With mutual TLS and no tokens file, the sender is the client certificate's common name.
`/healthz` is always open; `/metrics` needs a token when `protect_metrics` is set.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
import orjson
import yaml

from collector import otlp_codec
from collector.events import RequestUnauthenticated, TokensReloaded
from collector.http_server import Response
from nimtrail.config import CollectorConfig
from nimtrail.errors import ConfigError
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

SENDER_HEADER = "nimtrail.sender"
CHALLENGE = 'Bearer realm="nimtrail"'
MIN_TOKEN_CHARS = 16
RELOAD_CHECK_SECONDS = 1.0
# A refused request's body is read (and dropped) up to this size so the connection can be
# reused and the client sees the 401 rather than a reset; a longer one closes the connection.
DRAIN_BYTES = 1024 * 1024
HTTP_RECEIVERS = {**{path: f"otlp_http/{s.name}" for path, s in otlp_codec.SIGNALS.items()},
                  "/v1/nimlogs": "http_logs", "/metrics": "metrics"}

MISSING, MALFORMED, UNKNOWN = "missing_token", "not_bearer", "unknown_token"


class Refused(Exception):
    """The request is not authenticated; `reason` is the counter label."""

    def __init__(self, reason: str, message: str, detail: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = detail


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _fingerprint(token: str) -> str:
    """What may be logged about a token: 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def read_tokens(path: Path) -> list[tuple[bytes, str]]:
    """(SHA-256 digest, sender name) of every token in the file; ConfigError when unusable."""
    where = f"collector.auth.tokens_file: {path}"
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror})") from e
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None  # a token that YAML cannot read is still a line
    entries: list[tuple[str, str | None]] = []
    if isinstance(doc, dict):
        for token, name in doc.items():
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"{where}: the sender name of a token must be a string")
            entries.append((str(token), name))
    else:
        entries = [(line.strip(), None) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    book = []
    for i, (token, name) in enumerate(entries, 1):
        if token.startswith("sha256:"):
            hex_digest = token[len("sha256:"):].lower()
            if len(hex_digest) != 64 or any(c not in "0123456789abcdef" for c in hex_digest):
                raise ConfigError(f"{where}: token {i}: sha256: must be followed by 64 hex digits")
            digest = bytes.fromhex(hex_digest)
        else:
            if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
                raise ConfigError(f"{where}: token {i}: expected at least {MIN_TOKEN_CHARS} characters "
                                  f"without spaces (e.g. `openssl rand -hex 32`)")
            digest = _digest(token)
        book.append((digest, name or f"token-{digest.hex()[:8]}"))
    if not book:
        raise ConfigError(f"{where}: no tokens in it")
    return book


class Tokens:
    """The tokens of one file, re-read when the file changes."""

    def __init__(self, path: Path, metrics: StageMetrics):
        self.path = path
        self._metrics = metrics
        self._book = read_tokens(path)  # fail fast at start
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows the symlinks a Kubernetes Secret volume swaps
            return st.st_ino, st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._book = read_tokens(self.path)
                TokensReloaded(path=str(self.path), outcome="loaded",
                               detail=f"({len(self._book)} tokens)").emit(self._metrics, log)
            except ConfigError as e:
                TokensReloaded(path=str(self.path), outcome="invalid",
                               detail=f"(keeping the previous tokens): {e}").emit(self._metrics, log)

    def sender(self, authorization: str | None) -> str:
        """The sender name of a valid `Bearer` credential; Refused otherwise."""
        self._refresh()
        if not authorization:
            raise Refused(MISSING, "missing bearer token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(MALFORMED, "expected Authorization: Bearer <token>")
        digest = _digest(token)
        found = None
        for known, name in self._book:  # every entry, so the time does not tell which matched
            if hmac.compare_digest(known, digest):
                found = name
        if found is None:
            raise Refused(UNKNOWN, "unknown token", f"; token sha256 starts {_fingerprint(token)}")
        return found


def _common_name(subject: Any) -> str | None:
    for rdn in subject or ():
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class Guard:
    """What both receivers ask before reading a request: who sent it, or refuse it."""

    def __init__(self, tokens: Tokens | None, metrics: StageMetrics, *, protect_metrics: bool,
                 certificate_names: bool):
        self.tokens = tokens
        self.metrics = metrics
        self.protect_metrics = protect_metrics
        self.certificate_names = certificate_names

    def refused(self, receiver: str, peer: str, error: Refused) -> None:
        RequestUnauthenticated(receiver=receiver, peer=peer, reason=error.reason,
                               detail=error.detail).emit(self.metrics, log)

    # ---- HTTP ----

    def http(self, request: BaseHTTPRequestHandler, path: str) -> Response | None:
        """None to serve the request (its sender set as `request.sender`), else the 401."""
        if path == "/healthz" or (path == "/metrics" and not self.protect_metrics):
            return None
        if self.tokens is None:
            request.sender = self._certificate_name(request)
            return None
        try:
            request.sender = self.tokens.sender(request.headers.get("Authorization"))
            return None
        except Refused as e:
            self.refused(HTTP_RECEIVERS.get(path, "http"), request.client_address[0], e)
            # RFC 6750: no error code when the request carried no credentials at all.
            challenge = CHALLENGE if e.reason == MISSING else f'{CHALLENGE}, error="invalid_token"'
            return Response(401, orjson.dumps({"code": 401, "message": e.message}),
                            headers={"WWW-Authenticate": challenge}, close=not _drain(request))

    def _certificate_name(self, request: BaseHTTPRequestHandler) -> str | None:
        getpeercert = getattr(request.connection, "getpeercert", None)
        if not self.certificate_names or getpeercert is None:
            return None
        return _common_name((getpeercert() or {}).get("subject"))

    # ---- gRPC ----

    def grpc(self, context: grpc.ServicerContext, receiver: str) -> str | None:
        """The sender of a gRPC call; ends the call with UNAUTHENTICATED when refused."""
        if self.tokens is None:
            if not self.certificate_names:
                return None
            names = context.auth_context().get("x509_common_name") or [b""]
            return names[0].decode(errors="replace") or None
        authorization = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
        try:
            return self.tokens.sender(authorization if isinstance(authorization, str) else None)
        except Refused as e:
            self.refused(receiver, context.peer(), e)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, e.message)
            raise  # abort() raises; this is for readers and type checkers


def _drain(request: BaseHTTPRequestHandler) -> bool:
    """Read and drop a refused request's body; False when the connection must close."""
    length = request.headers.get("Content-Length")
    if request.headers.get("Transfer-Encoding") or not (length and length.isdigit()):
        return False
    left = int(length)
    if left > DRAIN_BYTES:
        return False
    try:
        while left:
            chunk = request.rfile.read(min(left, 64 * 1024))
            if not chunk:
                return False
            left -= len(chunk)
    except OSError:
        return False
    return True


def sender_headers(sender: str | None) -> tuple[tuple[str, bytes], ...]:
    """The Kafka headers that name who sent a message (none when nobody is known)."""
    return ((SENDER_HEADER, sender.encode()),) if sender else ()


def build(collector: CollectorConfig, metrics: StageMetrics) -> Guard | None:
    """The guard of both receivers; None when neither tokens nor client certificates name
    senders (then nothing is checked, at no cost per request)."""
    tokens = Tokens(Path(collector.auth.tokens_file), metrics) if collector.auth.tokens_file else None
    certificate_names = bool(collector.tls.client_ca_file)
    if tokens is None and not certificate_names:
        return None
    return Guard(tokens, metrics, protect_metrics=collector.auth.protect_metrics,
                 certificate_names=certificate_names)
