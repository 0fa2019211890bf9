"""OTLP/gRPC receiver: TraceService, LogsService and MetricsService `Export` on one port.

The services take the request's bytes undecoded, so a request that is not valid protobuf
reaches our handler (and the dead-letter topic, with INVALID_ARGUMENT) instead of failing
inside grpcio, and a valid one is forwarded byte for byte. Answers are sent only after the
request is durable; when it cannot be, the status tells the SDK to retry (UNAVAILABLE, or
RESOURCE_EXHAUSTED when the buffer is full) with a RetryInfo delay it honours.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from collector import otlp_codec, tls
from collector.auth import Guard
from collector.buffer import BufferFull
from collector.otlp_export import RETRY_AFTER_SECONDS, OtlpExport
from collector.sink import Sink
from nimtrail.config import CollectorConfig, ListenerConfig
from nimtrail.errors import PermanentError, TransientError

log = logging.getLogger(__name__)


class _Export:
    """The body of every Export method: the servicer classes below only pick the signal."""

    signal: otlp_codec.Signal

    def __init__(self, export: OtlpExport, sink: Sink, guard: Guard | None = None):
        self._export = export
        self._sink = sink
        self._guard = guard

    def Export(self, request: bytes, context: grpc.ServicerContext):  # noqa: N802 (gRPC's naming)
        receiver = f"otlp_grpc/{self.signal.name}"
        source = f"{receiver}:{context.peer()}"
        # Before anything is decoded or kept: an unauthenticated call ends here (UNAUTHENTICATED).
        sender = self._guard.grpc(context, receiver) if self._guard is not None else None
        try:
            return self._export.accept(self.signal, request, as_json=False, receiver=receiver, source=source,
                                       sender=sender)
        except PermanentError as e:
            self._sink.reject(receiver, e, request, source)
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT, str(e))
        except BufferFull as e:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED, str(e),
                   retry=True)
        except TransientError as e:
            _abort(context, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE, str(e), retry=True)


def _abort(context: grpc.ServicerContext, status: grpc.StatusCode, code: int, message: str,
           retry: bool = False) -> None:
    """End the call with `status`; a retry hint travels both as the google.rpc.Status
    details and as the `google.rpc.retryinfo-bin` trailer the OTel SDKs read."""
    details = status_pb2.Status(code=code, message=message)
    metadata = []
    if retry:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_SECONDS))
        details.details.add().Pack(info)
        metadata.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    metadata.append(("grpc-status-details-bin", details.SerializeToString()))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(status, message)


class TraceServicer(_Export, trace_service_pb2_grpc.TraceServiceServicer):
    signal = otlp_codec.SIGNALS["/v1/traces"]


class LogsServicer(_Export, logs_service_pb2_grpc.LogsServiceServicer):
    signal = otlp_codec.SIGNALS["/v1/logs"]


class MetricsServicer(_Export, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = otlp_codec.SIGNALS["/v1/metrics"]


SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": TraceServicer,
    "opentelemetry.proto.collector.logs.v1.LogsService": LogsServicer,
    "opentelemetry.proto.collector.metrics.v1.MetricsService": MetricsServicer,
}


@dataclasses.dataclass
class OtlpGrpcReceiver:
    server: grpc.Server
    port: int

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls; calls in progress get `grace` seconds to become durable."""
        self.server.stop(grace).wait()


def build(collector: CollectorConfig, export: OtlpExport, sink: Sink,
          guard: Guard | None = None, limits: ListenerConfig = ListenerConfig()) -> OtlpGrpcReceiver:
    """Create the gRPC server with the three OTLP services, bound but not yet started;
    with `guard`, every call is authenticated first; with collector.tls, it speaks TLS.

    Bounded like the HTTP listeners (config `listeners`): calls past max_connections in
    progress are refused at once with RESOURCE_EXHAUSTED instead of queueing without end
    behind the worker threads; a connection with no call for idle_timeout is sent GOAWAY;
    and one whose peer stops answering keepalive pings is closed (a vanished client does
    not hold its connection)."""
    limit = collector.max_body_bytes
    idle_ms = int(limits.idle_timeout * 1000)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=collector.grpc_workers, thread_name_prefix="collector-grpc"),
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", 4 * 1024 * 1024),
                 ("grpc.so_reuseport", 0),
                 ("grpc.max_connection_idle_ms", idle_ms),
                 ("grpc.keepalive_time_ms", idle_ms),
                 ("grpc.keepalive_timeout_ms", int(limits.read_timeout * 1000))],
        maximum_concurrent_rpcs=limits.max_connections)
    handlers = []
    for service, servicer_cls in SERVICES.items():
        servicer = servicer_cls(export, sink, guard)
        method = grpc.unary_unary_rpc_method_handler(
            servicer.Export, request_deserializer=None,  # raw bytes: decoded (and judged) by us
            response_serializer=lambda m: m.SerializeToString())
        handlers.append(grpc.method_handlers_generic_handler(service, {"Export": method}))
    server.add_generic_rpc_handlers(tuple(handlers))
    address = collector.otlp_grpc
    credentials = tls.grpc_credentials(collector.tls)
    if credentials is None:
        port = server.add_insecure_port(f"{address.host}:{address.port}")
    else:
        port = server.add_secure_port(f"{address.host}:{address.port}", credentials)
    if port == 0:
        raise OSError(f"collector.otlp_grpc: cannot listen on {address}")
    return OtlpGrpcReceiver(server, port)
