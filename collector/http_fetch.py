"""GET an HTTP endpoint under a total deadline and a size limit (for scrapes and polls)."""

from __future__ import annotations

import dataclasses
import socket
import ssl
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


def fetch(url: str, *, timeout: float, accept: str = "*/*", max_bytes: int = 16 * 1024 * 1024,
          headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> Fetched:
    """The response to GET `url` (any status); FetchError when there is none in `timeout`
    (each socket operation waits at most `timeout`; the whole answer is cut off after it).
    `headers` are added to the request; `context` verifies an https server."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": accept, "Accept-Encoding": "gzip",
                                                   "User-Agent": USER_AGENT})
    for name, value in (headers or {}).items():
        request.add_unredirected_header(name, value)  # a credential must not follow a redirect
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout,  # noqa: S310 - configured targets
                                              context=context)
        except urllib.error.HTTPError as e:
            response = e  # a 4xx/5xx answer is still an answer
        with response:
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FetchError("timeout", f"no complete answer from {url} within {timeout:.1f}s")
                chunk = response.read(min(256 * 1024, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"{url} answered more than {max_bytes} bytes")
            status, headers = response.status, response.headers
    except FetchError:
        raise
    except urllib.error.URLError as e:
        raise FetchError(_reason(e.reason) if isinstance(e.reason, BaseException) else "unreachable",
                         f"{url}: {e.reason}") from e
    except (OSError, ValueError) as e:  # ValueError: a malformed answer (http.client)
        raise FetchError(_reason(e), f"{url}: {e}") from e
    body = b"".join(chunks)
    try:
        body = inflate(body, headers.get("Content-Encoding", ""), max_bytes)
    except PermanentError as e:
        raise FetchError("bad_encoding", f"{url}: {e}") from e
    return Fetched(url, status, headers, body)
