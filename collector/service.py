"""Wires the collector together: Kafka producer, HTTP server, receivers."""

from __future__ import annotations

import logging
import threading

from collector import otlp_http
from collector.forward import Forwarder
from collector.http_server import HttpServer
from nimtrail import kafka_io
from nimtrail.config import Config
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)


class Collector:
    """A running collector; `stop()` stops accepting, then flushes what was acknowledged."""

    def __init__(self, config: Config):
        self.config = config
        t = config.topics
        kafka_io.ensure_topics(config, [t.otlp_spans, t.otlp_logs, t.otlp_metrics, t.nimlogs,
                                        t.scrapes, t.dlq], compacted=[t.deployments])
        self.metrics = StageMetrics("collector")
        producer = kafka_io.producer(config)
        self.forwarder = Forwarder(producer)
        self.dead_letters = DeadLetters(producer, t.dlq, "collector")
        http = config.collector.otlp_http
        self.http = HttpServer(http.host, http.port, self.metrics)
        otlp_http.build(config.collector, t, self.http, self.forwarder, self.dead_letters, self.metrics)

    def start(self) -> "Collector":
        self.http.start()
        log.info("Collector listening for OTLP/HTTP on port %s", self.http.port)
        return self

    def stop(self) -> None:
        self.http.shutdown()
        self.forwarder.close()


def run(config: Config, stop: threading.Event) -> None:
    collector = Collector(config).start()
    try:
        stop.wait()
    finally:
        collector.stop()
