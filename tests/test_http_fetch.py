"""A scrape's `timeout` is a deadline for the whole fetch: a real HTTP server that trickles
its headers or its body a byte at a time is cut off at the deadline, not served to the end."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from collector.http_fetch import FetchError, fetch
from tests.harness import wait_for

BODY = b"# TYPE nim_requests counter\nnim_requests_total 1\n" * 4  # 200 bytes
BYTE_EVERY = 0.1  # the whole trickle takes about 20 s; the deadline is 1 s


class TrickleServer:
    """Sends the status line, then the headers or the body one byte every BYTE_EVERY
    seconds; `sent` counts the bytes a client stayed for."""

    def __init__(self, part: str):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(BODY))
                slow, fast = (head, b"") if part == "headers" else (b"", head)
                try:
                    self.wfile.write(fast)
                    for i in range(len(slow)):
                        self.wfile.write(slow[i:i + 1])
                        self.wfile.flush()
                        server.sent += 1
                        time.sleep(BYTE_EVERY)  # the slowness under test
                    for i in range(len(BODY)):
                        self.wfile.write(BODY[i:i + 1])
                        self.wfile.flush()
                        server.sent += 1
                        time.sleep(BYTE_EVERY)
                except OSError:
                    pass  # the client hung up: what this server waits to see
                finally:
                    server.done.set()

            def log_message(self, *args: object) -> None:
                pass

        self.sent = 0
        self.done = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickling_target_is_cut_off_at_the_scrape_timeout(part):
    server = TrickleServer(part)
    try:
        with pytest.raises(FetchError) as error:
            fetch(server.url, timeout=1.0)
        assert error.value.reason == "timeout"
        # The fetch gave up at its deadline: the server saw the client leave early in the
        # trickle (a second's worth is 10 bytes), long before the headers (~70 bytes) or the
        # body (200 bytes) were through.
        wait_for(server.done.is_set, 30, what="the server to notice the client left")
        assert 0 < server.sent < 40, server.sent
    finally:
        server.close()
