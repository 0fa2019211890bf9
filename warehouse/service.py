"""Wires the warehouse together: the store, the ingest loop and the query API."""

from __future__ import annotations

import logging
import threading

from nimtrail import kafka_io
from nimtrail.config import Config
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics
from warehouse.api import QueryApi
from warehouse.ingest import Ingest
from warehouse.store import Store

log = logging.getLogger(__name__)


def run(config: Config, stop: threading.Event) -> None:
    t = config.topics
    kafka_io.ensure_topics(config, [*t.audit().values(), t.dlq])
    metrics = StageMetrics("warehouse")
    store = Store(config.warehouse_path)
    producer = kafka_io.producer(config)
    ingest = Ingest(config, store, metrics, DeadLetters(producer, t.dlq, "warehouse"))
    api = QueryApi(config.warehouse.api.host, config.warehouse.api.port, store, metrics,
                   lambda: not stop.is_set()).start()
    log.info("Warehouse writing %s, query API on port %s", config.warehouse_path, api.port)
    try:
        while not stop.is_set():
            ingest.run_once()
    finally:
        api.shutdown()
        ingest.close()
        producer.close(timeout=30)
        store.close()
