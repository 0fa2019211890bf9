"""Wires the warehouse together: the store, the ingest loop, the ledger checkpoints,
retention and the query API. One thread writes (ingest, checkpoints, retention); API
threads read, and write only their access-log entries, through the store's write lock."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from nimtrail import heap, kafka_io
from nimtrail.config import Config
from nimtrail.kafka_io import DeadLetters
from nimtrail.ops import StageMetrics
from warehouse import published, retention, shard_reads, shards
from warehouse.access import Principal
from warehouse.alerts import Alerter
from warehouse.api import QueryApi
from warehouse.checkpoint import Checkpointer
from warehouse.events import TaskFailed
from warehouse.ingest import Ingest
from warehouse.store import Store

log = logging.getLogger(__name__)
SCHEDULER = Principal("warehouse:retention-schedule", "admin")
MEMORY_REPORT_EVERY = 15.0  # seconds between readings of DuckDB's memory for /metrics


def run(config: Config, stop: threading.Event) -> None:
    heap.map_large_blocks()
    config = shards.for_shard(config)
    if shards.sharded(config):
        shards.token(config, create=True)
    for layout in shards.other_layouts(config):
        log.warning("Warehouse shards of another layout (%s) are in the data directory: this one "
                    "(warehouse.shards %d) does not read them", layout, config.warehouse.shards)
    t = config.topics
    kafka_io.ensure_topics(config, [*t.audit().values(), t.dlq, t.digests])
    metrics = StageMetrics("warehouse")
    store = Store(config.warehouse_path, config.warehouse)
    producer = kafka_io.producer(config)

    def publish(name: str, data: bytes) -> None:
        key = shards.digest_prefix(config) + name
        producer.send(t.digests, key=key.encode(), value=data).get(timeout=30)

    checkpointer = Checkpointer(store, config.data_path, config.warehouse.checkpoint_interval,
                                metrics, publish, t.digests, published.copy_dir(config),
                                config.warehouse.keys_dir)
    # A digest at start (publishing whatever an earlier run left unpublished): the newest
    # digest is then never older than an interval while the warehouse runs.
    _task("checkpoint", metrics, checkpointer.checkpoint)
    ingest = Ingest(config, store, metrics, DeadLetters(producer, t.dlq, "warehouse"))
    api = QueryApi(config, store, metrics, lambda: not stop.is_set()).start()
    alerter = Alerter(config, store, metrics).start()  # its own thread: never holds ingest up
    log.info("Warehouse %swriting %s, %s on port %s",
             f"{shards.name(config)} " if shards.sharded(config) else "", config.warehouse_path,
             "the shards' internal API" if config.warehouse.shard else "query API", api.port)
    every = float(config.warehouse.retention.interval)
    next_retention = time.monotonic() + every if every > 0 else None
    next_memory_report = time.monotonic()
    trimmer = heap.Trimmer()
    try:
        while not stop.is_set():
            ingest.run_once()
            if time.monotonic() >= next_memory_report:
                next_memory_report = time.monotonic() + MEMORY_REPORT_EVERY
                _task("memory report", metrics, lambda: report_memory(store, metrics))
            trimmer.maybe()  # what each poll's frames and messages freed, back to the system
            if checkpointer.due():
                _task("checkpoint", metrics, checkpointer.checkpoint)
            if next_retention is not None and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + every
                _task("retention", metrics, lambda: scheduled_retention(store, config, metrics))
    finally:
        api.shutdown()
        alerter.close()
        ingest.close()
        # sign what this run wrote, so the last head is covered
        _task("checkpoint", metrics, checkpointer.checkpoint)
        producer.close(timeout=30)
        store.close()


def scheduled_retention(store: Store, config: Config, metrics: StageMetrics) -> None:
    """A shard other than 0 first takes the front's legal holds; when the front does not
    answer, this run purges nothing (the task fails and is logged; the next one retries)."""
    shard_reads.take_front_holds(store, config)
    retention.apply(store, config.warehouse.retention, SCHEDULER, metrics=metrics, sharded=shards.sharded(config))


def report_memory(store: Store, metrics: StageMetrics) -> None:
    """DuckDB's memory by tag as a gauge, so a growing warehouse shows which part grows."""
    gauge = metrics.gauge("duckdb_memory", "bytes", "Memory DuckDB holds, by what holds it "
                          "(bounded by warehouse.memory_limit)", ("tag",))
    for tag, used in store.memory().items():
        gauge.labels(tag=tag).set(used)
    metrics.gauge("key_index", "bytes", "Memory of the key index of the large tables (12 bytes a "
                  "stored row, outside DuckDB's limit)").set(store.key_index_bytes())


def _task(name: str, metrics: StageMetrics, run: Callable[[], object]) -> None:
    """Periodic work must not stop ingestion: a failure is logged, counted, retried."""
    try:
        run()
    except Exception as e:  # noqa: BLE001 - any failure; the next turn retries
        log.debug("%s failed", name, exc_info=True)
        TaskFailed(task=name, error=f"{type(e).__name__}: {e}").emit(metrics, log)
