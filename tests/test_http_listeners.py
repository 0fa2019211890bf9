"""Slow and silent clients against every HTTP listener: the collector's OTLP/HTTP port
(plain, as a real process, and TLS), the warehouse's query API and a stage's ops server.
Each is closed at its deadline, connections past the cap are refused at once while the open
ones are served, the threads they held come back, and all of it is counted on /metrics."""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
from pathlib import Path
from typing import Callable

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from collector import tls
from collector.http_server import HttpServer
from nimtrail import config as config_mod
from nimtrail.config import Duration, ListenerConfig, TlsConfig
from nimtrail.http_listener import serve_ops
from nimtrail.ops import StageMetrics
from tests.collector_support import metric, running
from tests.harness import Env, wait_for
from tests.tls_support import make_pki
from warehouse.api import QueryApi
from warehouse.store import Store

# What a slow client sends before trickling the rest a byte at a time: part of its headers,
# or all of them and then its body.
OPENINGS = {"headers": b"POST /v1/traces HTTP/1.1\r\nHost: nimtrail\r\nX-Slow: ",
            "body": b"POST /v1/traces HTTP/1.1\r\nHost: nimtrail\r\nContent-Type: application/x-protobuf\r\n"
                    b"Content-Length: 100000\r\n\r\n"}
TRICKLE_EVERY = 0.3  # seconds between the bytes a slow client sends: far under any deadline


class SlowClients:
    """Connections that send a request's first bytes and then one byte at a time (`trickle`
    "headers" or "body"), or nothing at all (None); a thread keeps them trickling and notes
    when the server closes them."""

    def __init__(self) -> None:
        self.open: list[socket.socket] = []
        self.trickling: set[socket.socket] = set()
        self.closed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, trickle: str | None) -> None:
        if trickle:
            sock.sendall(OPENINGS[trickle])
        with self._lock:
            self.open.append(sock)
            if trickle:
                self.trickling.add(sock)

    def _run(self) -> None:
        while not self._stop.wait(TRICKLE_EVERY):
            with self._lock:
                socks = list(self.open)
            for sock in socks:
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable and not sock.recv(1024):
                        raise ConnectionResetError("closed by the server")
                    if sock in self.trickling:
                        sock.send(b"a")
                except (OSError, ValueError):
                    with self._lock:
                        self.open.remove(sock)
                        self.closed += 1
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.open:
            sock.close()


def _sample(exposition: bytes, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(exposition.decode()) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# ---- every listener, in process --------------------------------------------------------

LIMITS = ListenerConfig(read_timeout=Duration(1.5), idle_timeout=Duration(5), max_connections=4)


def _ops(tmp: Path, metrics: StageMetrics) -> tuple[int, Callable[[], None], ssl.SSLContext | None]:
    server = serve_ops(("127.0.0.1", 0), metrics, lambda: True, LIMITS)
    return server.port, lambda: (server.shutdown(), server.server_close()), None


def _warehouse_api(tmp: Path, metrics: StageMetrics) -> tuple[int, Callable[[], None], ssl.SSLContext | None]:
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp / "data"),
                                        "NIMTRAIL_LISTENERS__READ_TIMEOUT": "1.5s",
                                        "NIMTRAIL_LISTENERS__IDLE_TIMEOUT": "5s",
                                        "NIMTRAIL_LISTENERS__MAX_CONNECTIONS": "4"})
    assert config.listeners == LIMITS
    store = Store(config.warehouse_path)
    api = QueryApi(config, store, metrics, lambda: True, host="127.0.0.1", port=0).start()
    return api.port, lambda: (api.shutdown(), store.close()), None


def _collector_tls(tmp: Path, metrics: StageMetrics) -> tuple[int, Callable[[], None], ssl.SSLContext | None]:
    pki = make_pki(tmp / "pki")
    context = tls.server_context(TlsConfig(cert_file=str(pki.server_cert), key_file=str(pki.server_key)))
    server = HttpServer("127.0.0.1", 0, metrics, tls=context, limits=LIMITS)
    server.start()
    return server.port, server.shutdown, ssl.create_default_context(cafile=str(pki.ca))


@pytest.mark.parametrize("listener", [_ops, _warehouse_api, _collector_tls], ids=["ops", "warehouse_api",
                                                                                  "collector_tls"])
def test_slow_clients_are_closed_and_over_the_cap_refused_on_every_listener(tmp_path, listener):
    metrics = StageMetrics("stage")
    port, stop, client_tls = listener(tmp_path, metrics)
    exposition = metrics.exposition
    dropped = "nimtrail_stage_http_connections_dropped_total"

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        return client_tls.wrap_socket(sock, server_hostname="127.0.0.1") if client_tls else sock

    def healthz(conn: http.client.HTTPConnection) -> int:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        return response.status

    kept = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_tls) if client_tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    slow = SlowClients()
    try:
        assert healthz(kept) == 200
        slow.add(connect(), trickle=None)  # says nothing: the idle deadline
        for _ in range(2):
            slow.add(connect(), trickle="headers")  # never finishes its headers: the read deadline
        wait_for(lambda: _sample(exposition(), "nimtrail_stage_http_connections_open") == 4,
                 10, what="four open connections")

        # Past the cap: refused at once, without waiting on anyone's deadline.
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra.settimeout(10)
        try:
            answer = extra.recv(1024) if not client_tls else b""
        except ConnectionResetError:
            answer = b""
        assert answer.startswith(b"HTTP/1.1 503") or answer == b""
        extra.close()
        if client_tls:  # on TLS the refusal is a closed connection: the handshake fails
            with pytest.raises((ssl.SSLError, OSError)):
                connect().recv(1)
        assert _sample(exposition(), dropped, reason="over_capacity") >= 1
        assert healthz(kept) == 200  # the open connections are still served

        wait_for(lambda: slow.closed == 3, 30, what="the server to close the three slow connections")
        assert _sample(exposition(), dropped, reason="read_timeout") == 2
        assert _sample(exposition(), dropped, reason="idle_timeout") >= 1
        kept.close()
        wait_for(lambda: _sample(exposition(), "nimtrail_stage_http_connections_open") == 0, 30,
                 what="every connection thread to end")
        fresh = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_tls) if client_tls
                 else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
        assert healthz(fresh) == 200
        fresh.close()
    finally:
        slow.close()
        stop()


# ---- the collector as a real process: threads come back -------------------------------

CAP = 48  # a third silent, a third trickling headers, a third trickling a body


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _export(env: Env, name: str) -> int:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), name
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=30)
    try:
        conn.request("POST", "/v1/traces", body=request.SerializeToString(),
                     headers={"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_many_slow_clients_do_not_keep_the_collectors_threads(tmp_path, kafka_bootstrap):
    env = Env(tmp_path, kafka_bootstrap, listeners={"read_timeout": "2s", "idle_timeout": "4s",
                                                    "max_connections": CAP})
    process = env.start("collector")
    slow = SlowClients()
    try:
        env.wait_ready("collector")
        assert _export(env, "before") == 200
        # Metrics and the thread count settle once the first request has been forwarded.
        baseline = wait_for(lambda: _threads(process.pid), what="the thread count")
        refused = 0
        for i in range(CAP + 20):
            sock = socket.create_connection(("127.0.0.1", env.ports["http"]), timeout=10)
            if i < CAP:
                slow.add(sock, trickle=(None, "headers", "body")[i % 3])
                continue
            sock.settimeout(10)  # past the cap: the answer comes at once, not after a deadline
            try:
                refused += sock.recv(1024).startswith(b"HTTP/1.1 503")
            except ConnectionResetError:
                refused += 1
            sock.close()
        assert refused == 20
        assert _threads(process.pid) >= baseline + CAP - 1  # one thread per held connection

        wait_for(lambda: slow.closed == CAP, 60, what="the collector to close every slow connection")
        wait_for(lambda: _threads(process.pid) <= baseline + 2, 30, what="the connection threads to end")
        assert _export(env, "after") == 200  # and a normal client is served as before
        page = f"{env.otlp_http}/metrics"
        dropped = "nimtrail_collector_http_connections_dropped_total"
        assert metric(page, dropped, reason="read_timeout") == 2 * CAP // 3
        assert metric(page, dropped, reason="idle_timeout") >= CAP // 3
        assert metric(page, dropped, reason="over_capacity") == 20
    finally:
        slow.close()
        env.stop_all()


def test_an_idle_grpc_connection_is_sent_away(tmp_path, kafka_bootstrap):
    env = Env(tmp_path, kafka_bootstrap, listeners={"idle_timeout": "1s"})
    with running(env):
        channel = grpc.insecure_channel(f"127.0.0.1:{env.ports['grpc']}")
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        request = trace_service_pb2.ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), "grpc idle"
        assert stub.Export(request, timeout=30) == trace_service_pb2.ExportTraceServiceResponse()
        # The server ends the connection (GOAWAY) once no call has been made for idle_timeout.
        wait_for(lambda: grpc.ChannelConnectivity.READY in states
                 and states[-1] == grpc.ChannelConnectivity.IDLE, 30, what="the idle connection to be closed")
        assert stub.Export(request, timeout=30) == trace_service_pb2.ExportTraceServiceResponse()  # reconnects
        channel.close()
