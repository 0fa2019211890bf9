"""Findings pushed out as they enter the audit trail: one alert per finding group (kind,
deployment, tool, policy) to Prometheus Alertmanager and/or a JSON webhook.

A background thread of the warehouse, fed only by findings already committed to the store
(so what alerts is what the audit trail holds), never by the ingest loop itself: a slow or
absent receiver never holds ingest up. Each turn:

 1. read the findings that ledger entries after the cursor committed, up to the ledger
    head, that are open and at least `min_severity`, each with its group as the findings
    query computes it (governance.keyed);
 2. in one transaction, insert an alert for each group that has none yet (a later finding
    of an alerted group raises nothing) with the receivers it must reach, and move the
    cursor to that head. A crash before COMMIT repeats step 1 at the next start; after it,
    nothing is lost: the alerts wait in the store;
 3. per receiver, POST what is pending for it, oldest first, and after a 2xx take the
    receiver off those alerts. A crash between the POST and that update sends them once
    more at the next start (at least once; Alertmanager merges alerts with equal labels).

A receiver that fails is tried again after a wait that doubles up to `retry_max`; the
other receiver goes on meanwhile. The cursor starts at the ledger head the first time
alerts are configured: findings committed before then do not alert.

Over shards (warehouse/shards.py) the front alone alerts, for every shard: a finding group
spread over shards is one group, and alerts once. It keeps a cursor per shard's ledger and
asks each other shard for its findings after it (the shard read `alert-findings`, the same
scan over the shard's own store); a shard that does not answer is asked again next turn,
from where its cursor stayed. The other shards raise nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import duckdb
import orjson

from app.launch import app_url
from nimtrail.config import Config
from nimtrail.ops import Event, StageMetrics
from nimtrail.records import canonical_bytes
from warehouse import front, shards
from warehouse.alerts_receivers import Alert, DeliveryFailed, Receiver, receivers, trace_url
from warehouse.events import TaskFailed
from warehouse.ledger import now
from warehouse.queries.actions import SEVERITY_NAMES, SEVERITY_RANK
from warehouse.queries.governance import GROUP_COLUMNS, keyed
from warehouse.sql import scalar
from warehouse.store import Store
from warehouse.tables import iso

log = logging.getLogger(__name__)

RANKS = {name: rank for rank, name in SEVERITY_NAMES.items()}
# The findings of the ledger entries in (cursor, head]: a finding written again (a new
# version) is looked at again, and its group is already alerted.
COMMITTED = ("SELECT key FROM ledger_rows WHERE tbl = 'findings' AND row_hash IS NOT NULL "
             "AND seq > ? AND seq <= ?")
SCAN_SQL = f"""{keyed([f"({SEVERITY_RANK}) >= ?", f"t.finding_id IN ({COMMITTED})"])}
    SELECT {", ".join(f"k.{c}" for c in GROUP_COLUMNS)}, k.severity, k.finding_id, k.subject_ids,
           k.detected_at, k.detail
    FROM keyed k WHERE k.open
    ORDER BY k.rank DESC, k.seen_at NULLS LAST, k.finding_id"""
ALERT_COLUMNS = (*GROUP_COLUMNS, "severity", "finding", "raised_at")
FIRST_RETRY = 1.0  # seconds before the second attempt at a failing receiver


class AlertRaised(Event):
    level = logging.WARNING
    message = "Raised an alert for %(severity)s %(kind)s findings on %(deployment)s (tool %(tool)s)"
    thing, unit, doc = "alerts_raised", "groups", "Finding groups that raised an alert"
    labels = ("kind", "severity")


class AlertsDelivered(Event):
    level = logging.INFO
    message = "Delivered %(count)s alerts to %(receiver)s"
    thing, unit, doc = "alerts_delivered", "alerts", "Alerts a receiver took (answered 2xx)"
    labels = ("receiver",)


class AlertDeliveryFailed(Event):
    level = logging.WARNING
    message = "Could not deliver alerts to %(receiver)s (%(error)s); next attempt in %(retry_in).1fs"
    thing, unit, doc = "alert_delivery_failures", "total", "Attempts at a receiver that failed"
    labels = ("receiver", "reason")


class Backoff:
    """When a failing receiver may be tried again: the wait doubles per failure (with
    jitter, so receivers that failed together do not retry together) up to `cap`."""

    def __init__(self, cap: float):
        self.cap = cap
        self.failures = 0
        self.next_at = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.next_at

    def failed(self) -> float:
        self.failures += 1
        delay = min(self.cap, FIRST_RETRY * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.0)
        self.next_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_at = 0, 0.0


def findings_since(store: Store, con: duckdb.DuckDBPyConnection, after: int | None,
                   min_rank: int) -> dict[str, Any]:
    """This store's ledger head and the open findings of at least `min_rank` that entries
    in (after, head] committed, most severe of each group first, as JSON takes them; no
    findings when `after` is None (the head is where a new cursor starts)."""
    head = store.ledger.head.seq  # only ever a committed entry
    if after is None or head <= after:
        return {"head": head, "findings": []}
    found = []
    for row in con.execute(SCAN_SQL, [min_rank, after, head]).fetchall():
        kind, deployment, tool, policy, severity, finding_id, subject_ids, detected_at, detail = row
        found.append({"kind": kind, "deployment": deployment, "tool": tool, "policy": policy,
                      "severity": severity,
                      "finding": {"finding_id": finding_id, "subject_ids": subject_ids,
                                  "detected_at": iso(detected_at), "severity": severity,
                                  "detail": orjson.loads(detail) if isinstance(detail, str) else detail}})
    return {"head": head, "findings": found}


def _raises_before(found: dict[str, Any], other: dict[str, Any]) -> bool:
    """Of two shards' findings of one group, whether `found` raises its alert: the more
    severe, then the one detected first."""
    return ((-RANKS[found["severity"]], found["finding"]["detected_at"] or "~")
            < (-RANKS[other["severity"]], other["finding"]["detected_at"] or "~"))


class Alerter:
    """The alert loop of one warehouse. `start()` runs it in a thread when a receiver is
    configured (else it does nothing, and touches nothing); `close()` stops it. Over
    shards only the front's runs, for every shard."""

    def __init__(self, config: Config, store: Store, metrics: StageMetrics):
        settings = config.alerts
        self.store = store
        self.metrics = metrics
        self.receivers: list[Receiver] = receivers(settings)
        self.front = config.warehouse.shard == 0
        # The other shards, as (index, name, url), asked for their findings by the front.
        self.remotes = [(i, shards.name(config, i), shards.peer_url(config, i))
                        for i in range(1, config.warehouse.shards)]
        self._config = config
        self.cursors: dict[int, int] = {}  # shard -> the last ledger entry considered there
        self.min_rank = RANKS[settings.min_severity]
        self.app_url = settings.app_url or app_url(config)
        self.interval = float(settings.interval)
        self._backoff = {r.name: Backoff(float(settings.retry_max)) for r in self.receivers}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def cursor(self) -> int:
        """The last ledger entry of this warehouse's own store whose findings were considered."""
        return self.cursors.get(0, 0)

    def start(self) -> "Alerter":
        if self.open():
            self._thread = threading.Thread(target=self._run, name="warehouse-alerts", daemon=True)
            self._thread.start()
        return self

    def open(self) -> bool:
        """Read (or, the first time, set) the cursors; False when no receiver is configured,
        or this is a shard other than the front (which alerts for it)."""
        if not self.receivers:
            return False
        if not self.front:
            log.info("Alerts on this shard's findings are raised by the front (shard 0)")
            return False
        self._con = self.store.reader()
        self.cursors = dict(self._con.execute("SELECT shard, ledger_seq FROM alert_cursors").fetchall())
        if 0 not in self.cursors:
            self._start_cursor(0, self.store.ledger.head.seq)
        self._report_cursor()
        log.info("Alerting on %s findings and above to %s, after ledger entry %s%s",
                 SEVERITY_NAMES[self.min_rank], ", ".join(r.name for r in self.receivers), self.cursor,
                 f" (and every shard's findings, {len(self.remotes) + 1} shards)" if self.remotes else "")
        return True

    def _start_cursor(self, shard: int, seq: int) -> None:
        """The first time a shard's ledger is looked at: its findings until now do not alert."""
        with self.store.transaction() as con:
            con.execute("INSERT INTO alert_cursors VALUES (?, ?)", [shard, seq])
        self.cursors[shard] = seq

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._con is not None:
            self._con.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception as e:  # noqa: BLE001 - any failure; the next turn retries
                log.debug("alerts failed", exc_info=True)
                TaskFailed(task="alerts", error=f"{type(e).__name__}: {e}").emit(self.metrics, log)

    def run_once(self) -> None:
        self.raise_new()
        self.deliver()

    def _report_cursor(self) -> None:
        self.metrics.gauge("alerts_cursor", "seq", "The last ledger entry whose findings were "
                           "considered for alerts (this warehouse's own)").set(self.cursor)

    # ---- steps 1 and 2: committed findings -> alerts ----------------------------------

    def raise_new(self) -> int:
        """Alerts for the groups of findings committed since the cursors; how many."""
        scanned = self._scan()
        first: dict[str, dict[str, Any]] = {}
        for shard in sorted(scanned):  # the most severe, then earliest, finding of each group raises it
            mine: dict[str, dict[str, Any]] = {}
            for found in scanned[shard]["findings"]:  # a shard's come in that order
                mine.setdefault(canonical_bytes([found[c] for c in GROUP_COLUMNS]).decode(), found)
            for group, found in mine.items():
                if group not in first or _raises_before(found, first[group]):
                    first[group] = found
        moved = {shard: part["head"] for shard, part in scanned.items() if part["head"] > self.cursors[shard]}
        if not moved:
            return 0
        raised_at = now()
        pending = [r.name for r in self.receivers]
        with self.store.transaction() as con:
            new = [a for group, a in first.items() if con.execute(
                "INSERT INTO alerts (group_key, kind, deployment, tool, policy, severity, finding, "
                "raised_at, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (group_key) DO NOTHING RETURNING group_key",
                [group, a["kind"], a["deployment"], a["tool"], a["policy"], a["severity"],
                 canonical_bytes(a["finding"]).decode(), raised_at, pending]).fetchall()]
            for shard, head in moved.items():
                con.execute("UPDATE alert_cursors SET ledger_seq = ? WHERE shard = ?", [head, shard])
        self.cursors.update(moved)
        self._report_cursor()
        for a in new:
            AlertRaised(**{k: a[k] for k in ("kind", "severity", "deployment", "tool")}).emit(self.metrics, log)
        return len(new)

    def _scan(self) -> dict[int, dict[str, Any]]:
        """Each shard's head and findings after its cursor: this store's, and every other
        shard's that answers (one that does not keeps its cursor, and is asked next turn)."""
        scanned = {0: findings_since(self.store, self._con, self.cursor, self.min_rank)}
        for index, name, url in self.remotes:
            try:
                part = front.post(name, url, shards.token(self._config), "alert-findings",
                                  {"after": self.cursors.get(index), "min_rank": self.min_rank})
            except front.ShardUnavailable as e:
                log.warning("Alerts: %s; its findings are looked at again next turn", e)
                continue
            if index not in self.cursors:
                self._start_cursor(index, part["head"])
            else:
                scanned[index] = part
        return scanned

    # ---- step 3: alerts -> receivers --------------------------------------------------

    def deliver(self) -> None:
        for receiver in self.receivers:
            backoff = self._backoff[receiver.name]
            while backoff.ready() and not self._stop.is_set():
                batch = self._pending(receiver)
                if not batch:
                    break
                try:
                    receiver.send([alert for _key, alert in batch])
                except DeliveryFailed as e:
                    delay = backoff.failed()
                    AlertDeliveryFailed(receiver=receiver.name, reason=e.reason, error=str(e),
                                        retry_in=delay).emit(self.metrics, log)
                    break
                backoff.succeeded()
                with self.store.transaction() as con:
                    con.execute("UPDATE alerts SET pending = list_filter(pending, lambda x: x <> ?), "
                                "delivered_at = ? WHERE list_contains(?, group_key)",
                                [receiver.name, now(), [key for key, _alert in batch]])
                AlertsDelivered(receiver=receiver.name, count=len(batch)).emit(self.metrics, log, len(batch))
            self.metrics.gauge("alerts_pending", "alerts", "Alerts raised and not yet taken by the receiver",
                               ("receiver",)).labels(receiver.name).set(scalar(
                self._con, "SELECT count(*) FROM alerts WHERE list_contains(pending, ?)", [receiver.name]))
            self.metrics.gauge("alert_receiver_failures", "attempts", "Failed attempts at the receiver "
                               "since it last took alerts", ("receiver",)).labels(receiver.name).set(
                backoff.failures)

    def _pending(self, receiver: Receiver) -> list[tuple[str, Alert]]:
        rows = self._con.execute(
            f"SELECT group_key, {', '.join(ALERT_COLUMNS)} FROM alerts WHERE list_contains(pending, ?) "
            "ORDER BY raised_at, group_key LIMIT ?", [receiver.name, receiver.batch]).fetchall()
        out = []
        for key, *values in rows:
            a = dict(zip(ALERT_COLUMNS, values))
            finding = orjson.loads(a["finding"])
            out.append((key, Alert(**{**a, "finding": finding, "raised_at": iso(a["raised_at"])},
                                   trace_url=trace_url(self.app_url, finding.get("subject_ids")))))
        return out
