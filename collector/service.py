"""Wires the collector together: the Kafka producer and on-disk buffer behind a forwarder,
the HTTP and gRPC servers, and every receiver, each handed the sink it forwards to."""

from __future__ import annotations

import logging
import threading

from collector import (auth, filelog, http_logs, kubernetes_sd, nim_metadata, otlp_grpc, otlp_http,
                       prometheus, tls)
from collector.buffer import DiskBuffer
from collector.forward import Forwarder
from collector.http_server import HttpServer
from collector.otlp_export import OtlpExport
from collector.sink import Sink
from nimtrail import kafka_io
from nimtrail.config import Config
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_S = 30


class Collector:
    """A running collector; `stop()` stops accepting, then leaves everything it acknowledged
    in Kafka or in the on-disk buffer."""

    def __init__(self, config: Config):
        self.config = config
        self.metrics = StageMetrics("collector")
        t = config.topics
        c = config.collector
        # Token and certificate files are checked before anything touches the network.
        guard = auth.build(c, self.metrics)  # None: no tokens, no client certificates
        tls_context = tls.server_context(c.tls)
        kafka_io.ensure_topics(config, [t.otlp_spans, t.otlp_logs, t.otlp_metrics, t.nimlogs,
                                        t.scrapes, t.observations, t.dlq], compacted=[t.deployments])
        def producer():
            return kafka_io.producer(
                config,
                max_block_ms=int(c.ack_timeout * 1000),  # a send never blocks longer than an ack wait
                # Every request waits for its own acknowledgement, so a linger is latency each
                # request pays in full; under load the producer still batches whatever queues
                # up while a send is in flight.
                linger_ms=0,
                request_timeout_ms=kafka_io.REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=DELIVERY_TIMEOUT_S * 1000,
                partitioner=kafka_io.KeyPlacement(),
            )

        buffer = (DiskBuffer(config.buffer_path, c.buffer.max_bytes, c.buffer.segment_bytes)
                  if c.buffer.max_bytes else None)
        self.forwarder = Forwarder(producer, buffer, self.metrics, ack_timeout=float(c.ack_timeout),
                                   delivery_timeout=DELIVERY_TIMEOUT_S, dlq_topic=t.dlq)
        self.sink = Sink(self.forwarder, t.dlq, self.metrics)
        self.http = HttpServer(c.otlp_http.host, c.otlp_http.port, self.metrics,
                               guard=guard.http if guard else None, tls=tls_context,
                               limits=config.listeners)
        # Spans placed by trace for a split join (kafka_io.co_partitioned).
        export = OtlpExport(self.sink, t, trace_partitions=config.processor.partitions)
        otlp_http.build(c, export, self.http, self.sink)
        http_logs.build(c, t, self.http, self.sink)
        self.grpc = otlp_grpc.build(c, export, self.sink, guard, config.listeners)
        self.filelog = filelog.build(c, t, self.sink, config.collector_path)
        self.prometheus = prometheus.build(c, t, self.sink)
        self.nim_metadata = nim_metadata.build(c, t, self.sink)
        self.discovery = kubernetes_sd.build(c, self.metrics, self.prometheus, self.nim_metadata)
        self._stopped = False

    def start(self) -> "Collector":
        self.forwarder.start()
        self.http.start()
        self.grpc.start()
        self.filelog.start()
        self.prometheus.start()
        self.nim_metadata.start()
        self.discovery.start()
        log.info("Collector listening for OTLP/HTTP and NIM logs on port %s, OTLP/gRPC on port %s",
                 self.http.port, self.grpc.port)
        return self

    def stop(self) -> None:
        """Stop taking input; every receiver makes what it holds durable; then the forwarder
        stops draining and closes the producer. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.http.shutdown()
        self.grpc.stop()
        self.filelog.stop()
        self.discovery.stop()
        self.prometheus.stop()
        self.nim_metadata.stop()
        self.forwarder.close()


def run(config: Config, stop: threading.Event) -> None:
    collector = Collector(config).start()
    try:
        stop.wait()
    finally:
        collector.stop()
