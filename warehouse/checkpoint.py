"""Periodic signed checkpoints of the ledger: digest file, checkpoint row, digests topic.

A digest is signed every interval whether or not anything was written, so that a missing
or old newest digest means something (warehouse.rollback). Numbers increase by one per
digest. A digest after writes is recorded in the store as below; an idle one (nothing
ledgered since the last digest but that digest's own `checkpoint` entry) names the same
chain head as the idle digests before it, is marked `"idle": true` and is not recorded
(recording it would add a ledger entry, and the store would never be idle): it is only
written, copied and published.

Order, and what a crash between the steps leaves behind:
 1. under the write lock, read the chain head and counts (nothing can move meanwhile);
 2. write the signed digest file (fsync, rename): a crash now leaves a file the store does
    not record; the next start renames it *.unrecorded and the next digest reuses its number;
 3. in the same transaction, insert the checkpoint row and a `checkpoint` ledger entry
    naming the file and its SHA-256; COMMIT;
 4. append the file to the write-once copy directory (if configured) and publish its bytes
    to the digests topic, then mark it published (operational table): a crash before the
    mark copies (the same bytes: nothing to do) and republishes it on start (consumers key
    by file name). The copy is made only after COMMIT, so a number a crash gave back
    (step 2) never reaches a place that cannot forget it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from nimtrail import faults
from nimtrail.ops import StageMetrics
from warehouse import digests, published
from warehouse.events import CheckpointWritten, DigestPublishFailed
from warehouse.ledger import now
from warehouse.sql import one, scalar
from warehouse.store import Store
from warehouse.tables import iso

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]


class Checkpointer:
    def __init__(self, store: Store, data_dir: Path, interval: float, metrics: StageMetrics,
                 publish: Publish | None = None, topic: str = "", copy_dir: Path | None = None,
                 keys_dir: str = ""):
        self.store = store
        self.dir = digests.digests_dir(data_dir)
        self.key = digests.load_or_create_key(digests.keys_dir(data_dir, keys_dir))
        self.fingerprint = digests.fingerprint(self.key.public_key())
        self.interval = interval
        self.metrics = metrics
        self.publish_fn = publish
        self.topic = topic
        self.copy_dir = copy_dir
        self._last = time.monotonic()
        self._idle_pending: list[tuple[int, str]] = []  # idle digests not yet copied/published
        self._set_aside_unrecorded()
        self._previous = self._newest_file()

    def due(self) -> bool:
        return self.interval > 0 and time.monotonic() - self._last >= self.interval

    def checkpoint(self) -> dict:
        """Write the next digest (an idle one if nothing was ledgered since the last); returns it."""
        self._last = time.monotonic()
        store = self.store
        with store.transaction() as con:
            head = store.ledger.head
            idle = head.seq == 0 or head.kind == "checkpoint"
            last = one(con, "SELECT digest_seq, file, file_sha256, chain_seq FROM checkpoints "
                            "ORDER BY digest_seq DESC LIMIT 1")
            previous = self._previous
            digest_seq = (previous[0] + 1) if previous else 1
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
                "previous": {"file": previous[1], "sha256": previous[2]} if previous else None,
                "public_key_sha256": self.fingerprint,
                **({"idle": True} if idle else {}),
            }, self.key)
            data = digests.file_bytes(doc)
            rel = digests.relative_path(digest_seq, created)
            digests.atomic_write(self.dir / rel, data)
            sha = digests.sha256(data)
            if not idle:
                faults.point("warehouse.after_digest_file")
                items = store.record(con, "checkpoints", [{
                    "digest_seq": digest_seq, "file": rel, "file_sha256": sha,
                    "chain_seq": head.seq, "chain_head": head.hash, "created_at": created,
                    "version": 1}])
                store.ledger.append(con, "checkpoint", {"digest_seq": digest_seq, "file": rel,
                                                        "file_sha256": sha}, items)
        # after COMMIT: an uncommitted number may be given back (see the module docstring)
        self._previous = (digest_seq, rel, sha)
        if idle:
            self._idle_pending.append((digest_seq, rel))
        CheckpointWritten(digest_seq=digest_seq, seq=head.seq, file=rel).emit(self.metrics, log)
        self.publish_pending()
        return doc

    def publish_pending(self) -> None:
        """Copy and send every digest not yet copied and on the digests topic (oldest first)."""
        if self.publish_fn is None and self.copy_dir is None:
            return
        recorded = self.store.reader().execute(
            "SELECT c.digest_seq, c.file FROM checkpoints c ANTI JOIN digest_publications p "
            "USING (digest_seq) ORDER BY c.digest_seq").fetchall()
        for digest_seq, rel in sorted([*recorded, *self._idle_pending]):
            idle = (digest_seq, rel) in self._idle_pending
            path = self.dir / rel
            if not path.exists():
                if idle:
                    self._idle_pending.remove((digest_seq, rel))
                continue  # verify reports the missing file; there is nothing to publish
            if not self._publish(digest_seq, rel, path.read_bytes()):
                return  # retried at the next checkpoint, in order
            if idle:
                self._idle_pending.remove((digest_seq, rel))
                continue
            with self.store.transaction() as con:
                con.execute("INSERT INTO digest_publications VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                            [digest_seq, self.topic, now()])

    def _publish(self, digest_seq: int, rel: str, data: bytes) -> bool:
        try:
            if self.copy_dir is not None:
                published.write_once(self.copy_dir, rel, data)
            if self.publish_fn is not None:
                self.publish_fn(rel, data)
        except Exception as e:  # noqa: BLE001 - Kafka or the copy's mount down: retried later
            DigestPublishFailed(digest_seq=digest_seq, error=f"{type(e).__name__}: {e}").emit(
                self.metrics, log)
            return False
        return True

    def _newest_file(self) -> tuple[int, str, str] | None:
        """(number, name, SHA-256) of the newest digest file, the next one's `previous`.
        Idle digests are files only, so the files, not the checkpoints table, number them
        (the number is in each file's name: no file needs reading but the newest)."""
        newest = None
        paths = digests.list_files(self.dir)
        if paths:
            path = max(paths, key=digests.number_in_name)
            data, doc = digests.read(path)
            if doc is not None and isinstance(doc.get("digest_seq"), int):
                newest = (doc["digest_seq"], path.relative_to(self.dir).as_posix(),
                          digests.sha256(data))
        recorded = one(self.store.reader(), "SELECT digest_seq, file, file_sha256 FROM checkpoints "
                                             "ORDER BY digest_seq DESC LIMIT 1")
        if recorded and (newest is None or recorded[0] > newest[0]):
            return recorded  # its file is gone: verify reports that; numbers still go up
        return newest

    def _set_aside_unrecorded(self) -> None:
        """A digest file that a crash left between steps 2 and 3 is renamed *.unrecorded:
        the store never committed it, and the next digest takes its number. Only the one
        file that fits that story is touched (the newest number, not idle, its chain head
        present in the ledger); anything else stays where it is for `verify` to report."""
        con = self.store.reader()
        recorded = {row[0] for row in con.execute("SELECT file FROM checkpoints").fetchall()}
        files = [(path, *digests.read(path)) for path in digests.list_files(self.dir)]
        numbers = [doc["digest_seq"] for _p, _d, doc in files
                   if doc and isinstance(doc.get("digest_seq"), int)]
        for path, _data, doc in files:
            rel = path.relative_to(self.dir).as_posix()
            if rel in recorded or not doc or doc.get("idle"):
                continue
            chain = doc.get("chain") or {}
            entry = one(con, "SELECT entry_hash FROM ledger WHERE seq = ?", [chain.get("seq")])
            if doc.get("digest_seq") == max(numbers) and entry and entry[0] == chain.get("head"):
                log.warning("Digest file %s was never recorded (a crash while checkpointing); "
                            "renaming it %s.unrecorded", rel, path.name)
                path.rename(path.with_name(path.name + ".unrecorded"))
