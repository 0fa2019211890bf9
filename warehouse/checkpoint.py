"""Periodic signed checkpoints of the ledger: digest file, checkpoint row, digests topic.

Order, and what a crash between the steps leaves behind:
 1. under the write lock, read the chain head and counts (nothing can move meanwhile);
 2. write the signed digest file (fsync, rename): a crash now leaves a file the store does
    not record; the next start renames it *.unrecorded and the next digest reuses its number;
 3. in the same transaction, insert the checkpoint row and a `checkpoint` ledger entry
    naming the file and its SHA-256; COMMIT;
 4. publish the file's bytes to the digests topic, then mark it published (operational
    table): a crash before the mark republishes it on start (consumers key by file name).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from nimtrail import faults
from nimtrail.ops import StageMetrics
from warehouse import digests
from warehouse.events import CheckpointWritten, DigestPublishFailed
from warehouse.ledger import now
from warehouse.sql import one, scalar
from warehouse.store import Store
from warehouse.tables import iso

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]


class Checkpointer:
    def __init__(self, store: Store, data_dir: Path, interval: float, metrics: StageMetrics,
                 publish: Publish | None = None, topic: str = ""):
        self.store = store
        self.dir = digests.digests_dir(data_dir)
        self.key = digests.load_or_create_key(digests.keys_dir(data_dir))
        self.fingerprint = digests.fingerprint(self.key.public_key())
        self.interval = interval
        self.metrics = metrics
        self.publish_fn = publish
        self.topic = topic
        self._last = time.monotonic()
        self._set_aside_unrecorded()

    def due(self) -> bool:
        return self.interval > 0 and time.monotonic() - self._last >= self.interval

    def checkpoint(self) -> dict | None:
        """Write a digest if anything was ledgered since the last one; returns it."""
        self._last = time.monotonic()
        store = self.store
        with store.transaction() as con:
            head = store.ledger.head
            if head.seq == 0 or head.kind == "checkpoint":
                return None
            last = one(con, "SELECT digest_seq, file, file_sha256, chain_seq FROM checkpoints "
                            "ORDER BY digest_seq DESC LIMIT 1")
            digest_seq = (last[0] + 1) if last else 1
            first_at, last_at = one(
                con, "SELECT min(committed_at), max(committed_at) FROM ledger WHERE seq > ? AND seq <= ?",
                [last[3] if last else 0, head.seq])
            counts = {name: scalar(con, f"SELECT count(*) FROM {name}") for name in store.by_name}
            created = iso(now())
            doc = digests.sign({
                "format": digests.FORMAT,
                "digest_seq": digest_seq,
                "created_at": created,
                "chain": {"seq": head.seq, "head": head.hash},
                "range": {"from_seq": (last[3] if last else 0) + 1, "to_seq": head.seq,
                          "first_at": iso(first_at), "last_at": iso(last_at)},
                "counts": counts,
                "previous": {"file": last[1], "sha256": last[2]} if last else None,
                "public_key_sha256": self.fingerprint,
            }, self.key)
            data = digests.file_bytes(doc)
            rel = digests.relative_path(digest_seq, created)
            digests.atomic_write(self.dir / rel, data)
            faults.point("warehouse.after_digest_file")
            sha = digests.sha256(data)
            items = store.record(con, "checkpoints", [{
                "digest_seq": digest_seq, "file": rel, "file_sha256": sha, "chain_seq": head.seq,
                "chain_head": head.hash, "created_at": created, "version": 1}])
            store.ledger.append(con, "checkpoint", {"digest_seq": digest_seq, "file": rel,
                                                    "file_sha256": sha}, items)
        CheckpointWritten(digest_seq=digest_seq, seq=head.seq, file=rel).emit(self.metrics, log)
        self.publish_pending()
        return doc

    def publish_pending(self) -> None:
        """Send every checkpoint not yet on the digests topic (oldest first)."""
        if self.publish_fn is None:
            return
        pending = self.store.reader().execute(
            "SELECT c.digest_seq, c.file FROM checkpoints c ANTI JOIN digest_publications p "
            "USING (digest_seq) ORDER BY c.digest_seq").fetchall()
        for digest_seq, rel in pending:
            path = self.dir / rel
            if not path.exists():
                continue  # verify reports it; nothing to publish
            try:
                self.publish_fn(rel, path.read_bytes())
            except Exception as e:  # noqa: BLE001 - Kafka down: retried at the next checkpoint
                DigestPublishFailed(digest_seq=digest_seq, error=f"{type(e).__name__}: {e}").emit(
                    self.metrics, log)
                return
            with self.store.transaction() as con:
                con.execute("INSERT INTO digest_publications VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                            [digest_seq, self.topic, now()])

    def _set_aside_unrecorded(self) -> None:
        """A digest file that a crash left between steps 2 and 3 is renamed *.unrecorded:
        the store never committed it, and the next digest takes its number. Only the one
        file that fits that story is touched (next number, its chain head present in the
        ledger); anything else stays where it is for `verify` to report."""
        con = self.store.reader()
        recorded = {row[0] for row in con.execute("SELECT file FROM checkpoints").fetchall()}
        last = scalar(con, "SELECT coalesce(max(digest_seq), 0) FROM checkpoints")
        for path in digests.list_files(self.dir):
            rel = path.relative_to(self.dir).as_posix()
            if rel in recorded:
                continue
            _data, doc = digests.read(path)
            chain = (doc or {}).get("chain") or {}
            entry = one(con, "SELECT entry_hash FROM ledger WHERE seq = ?",
                        [chain.get("seq")]) if doc else None
            if doc and doc.get("digest_seq") == last + 1 and entry and entry[0] == chain.get("head"):
                log.warning("Digest file %s was never recorded (a crash while checkpointing); "
                            "renaming it %s.unrecorded", rel, path.name)
                path.rename(path.with_name(path.name + ".unrecorded"))
