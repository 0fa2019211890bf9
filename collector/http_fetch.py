"""GET an HTTP endpoint under a total deadline and a size limit (for scrapes and polls)."""

from __future__ import annotations

import dataclasses
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from email.message import Message

from collector.http_body import inflate
from nimtrail.errors import PermanentError, TransientError

USER_AGENT = "nimtrail-collector"


class FetchError(TransientError):
    """The endpoint did not answer usefully; `reason` is a short label for counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Fetched:
    url: str
    status: int
    headers: Message
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _reason(error: BaseException) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(error, socket.gaierror):
        return "dns"
    if isinstance(error, ssl.SSLError):
        return "tls"
    if isinstance(error, ConnectionError):
        return "connection_reset"
    return "unreachable"


class _Deadline:
    """Shuts down every socket of one fetch when its time is up. A socket timeout bounds
    each read, not the answer: a target sending a byte a second would otherwise hold the
    fetch until it has sent everything. Shutting the socket down wakes whichever read is
    waiting, wherever http.client is (TLS handshake, status line, headers, body)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to wake


def _watched(base: type[http.client.HTTPConnection], deadline: _Deadline) -> type:
    class Connection(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Both HTTP and HTTPS connect through this (HTTPS before its handshake).
            self._create_connection = lambda *a, **k: deadline.watch(socket.create_connection(*a, **k))

    return Connection


def _opener(deadline: _Deadline, context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    plain, secure = _watched(http.client.HTTPConnection, deadline), _watched(http.client.HTTPSConnection, deadline)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(plain, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(secure, req, context=self._context)

    return urllib.request.build_opener(HttpHandler(), HttpsHandler(context=context))


def fetch(url: str, *, timeout: float, accept: str = "*/*", max_bytes: int = 16 * 1024 * 1024,
          headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> Fetched:
    """The response to GET `url` (any status); FetchError when there is none in `timeout`,
    which bounds the whole fetch: connect, TLS, headers and body (redirects included).
    `headers` are added to the request; `context` verifies an https server."""
    request = urllib.request.Request(url, headers={"Accept": accept, "Accept-Encoding": "gzip",
                                                   "User-Agent": USER_AGENT})
    for name, value in (headers or {}).items():
        request.add_unredirected_header(name, value)  # a credential must not follow a redirect
    deadline = _Deadline(timeout)
    late = FetchError("timeout", f"no complete answer from {url} within {timeout:.1f}s")
    try:
        try:
            response = _opener(deadline, context).open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            response = e  # a 4xx/5xx answer is still an answer
        with response:
            chunks, size = [], 0
            while chunk := response.read(min(256 * 1024, max_bytes + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"{url} answered more than {max_bytes} bytes")
            status, headers = response.status, response.headers
        if deadline.expired:  # an answer without a length ends where the shutdown cut it
            raise late
    except FetchError:
        raise
    except urllib.error.URLError as e:
        if deadline.expired:
            raise late from e
        raise FetchError(_reason(e.reason) if isinstance(e.reason, BaseException) else "unreachable",
                         f"{url}: {e.reason}") from e
    # ValueError, HTTPException: a malformed or cut-off answer (http.client)
    except (OSError, ValueError, http.client.HTTPException) as e:
        if deadline.expired:
            raise late from e
        raise FetchError(_reason(e), f"{url}: {e}") from e
    finally:
        deadline.cancel()
    body = b"".join(chunks)
    try:
        body = inflate(body, headers.get("Content-Encoding", ""), max_bytes)
    except PermanentError as e:
        raise FetchError("bad_encoding", f"{url}: {e}") from e
    return Fetched(url, status, headers, body)
