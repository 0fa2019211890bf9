"""TLS, and mutual TLS, on the collector's two listeners (collector.tls).

With `cert_file` and `key_file` both listeners speak only TLS (1.2 or later). With
`client_ca_file` too, a client must present a certificate signed by one of its CAs; one
that does not is refused during the handshake, before any request is read. Certificates
are read at start: a renewed certificate takes effect at the next restart.

The HTTP server runs each handshake in the connection's own thread under a deadline, so a
slow or silent client cannot hold up the others. A failed handshake there is counted as
nimtrail_collector_unauthenticated_requests_total{receiver="http", reason="tls_handshake"}
(a connection closed before any byte, like a TCP probe, is not). gRPC refuses in its core
library, which does not report it to us.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import grpc

from collector.events import RequestUnauthenticated
from nimtrail.config import ListenerConfig, TlsConfig
from nimtrail.errors import ConfigError
from nimtrail.http_listener import LimitedHandler, Listener
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 10.0


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"collector.tls.{key}: cannot read {path} ({e.strerror})") from e


def server_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The HTTP listener's TLS context; None without a certificate. ConfigError naming the
    key when a file cannot be used."""
    if not tls.cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"collector.tls.cert_file: cannot use {tls.cert_file} with "
                          f"{tls.key_file}: {e}") from e
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"collector.tls.client_ca_file: cannot use {tls.client_ca_file}: {e}") from e
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """The gRPC listener's credentials; None without a certificate."""
    if not tls.cert_file:
        return None
    server_context(tls)  # the same checks, with the same errors, before grpc sees the files
    pair = (_read(tls.key_file, "key_file"), _read(tls.cert_file, "cert_file"))
    roots = _read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=roots is not None)


class TlsHttpServer(Listener):
    """A Listener whose connections are TLS, handshaken in their own thread."""

    def __init__(self, address: tuple[str, int], handler: type[LimitedHandler], limits: ListenerConfig,
                 context: ssl.SSLContext, metrics: StageMetrics):
        self.context = context
        super().__init__(address, handler, limits, metrics)

    def get_request(self) -> tuple[socket.socket, tuple]:
        sock, address = self.socket.accept()
        sock.settimeout(min(HANDSHAKE_SECONDS, self.limits.read_timeout))
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        try:
            request.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLError as e:
            if not isinstance(e, ssl.SSLEOFError):
                RequestUnauthenticated(receiver="http", peer=client_address[0], reason="tls_handshake",
                                       detail=f": {e.reason or e}").emit(self.metrics, log)
            return
        except OSError as e:  # reset, timeout: nothing was said
            log.debug("TLS handshake with %s did not finish: %s", client_address[0], e)
            return
        super().finish_request(request, client_address)
