"""filelog receiver: tail log files by glob and forward their lines as nimlogs batches.

For each configured target (collector.filelog: include, exclude, deployment, start_at,
format, poll_interval) the receiver polls its globs, follows each file by identity
(device, inode and a fingerprint of its first bytes), removes CRI or Docker json-file
framing, and forwards batches of lines to the nimlogs topic keyed by source (the path the
file was found at).

Rotation: a file renamed away (or deleted) is read to its end through the descriptor
already open, then closed; the new file at the path is read from its beginning. A restart
finds a rotated file it had not finished in the same directory by its inode.
Truncation (copytruncate): the file is read again from its beginning.

Commit order, per batch:
1. read lines after the committed offset (nothing is marked yet);
2. make the dead-letter pieces and the nimlogs messages durable (Kafka or the buffer);
3. only then move the offsets and write filelog-offsets.json atomically.
A failed step 2 rewinds the file to the committed offset; the lines are read again.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import random
import stat
import threading
import time

from collector import nimlogs
from collector.events import FileEvent, ItemsReceived
from collector.filelog_offsets import FileState, OffsetStore
from collector.filelog_reader import fingerprint, matches
from collector.filelog_tail import Batch, Tailer
from collector.forward import Entry
from collector.sink import Sink
from nimtrail import faults
from nimtrail.config import CollectorConfig, FilelogTarget, TopicsConfig
from nimtrail.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

RECEIVER = "filelog"
MAX_BATCH_LINES = 10_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
IDLE_POLLS_BEFORE_CLOSE = 2  # a rotated file that stopped growing for this many polls is done
PRUNE_EVERY = 60.0  # seconds between forgetting the offsets of files that are gone


class FilelogReceiver:
    def __init__(self, collector: CollectorConfig, topics: TopicsConfig, sink: Sink, state_dir):
        self.targets = collector.filelog
        self.max_line = collector.max_line_bytes
        self.topic = topics.nimlogs
        self.sink = sink
        self.offsets = OffsetStore(state_dir)
        self.tailers: dict[str, Tailer] = {}
        self.poll_interval = min((t.poll_interval for t in self.targets), default=0.25)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first = True
        self._pruned = time.monotonic()

    # ---- lifecycle ----

    def start(self) -> None:
        if self.targets and self._thread is None:
            self._recover_rotated()
            self._thread = threading.Thread(target=self._run, name="collector-filelog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the batch in progress (send and commit it), then close every file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        for tailer in self.tailers.values():
            tailer.close()
        self.tailers.clear()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                more = self.poll()
                backoff = 0.5
            except TransientError:
                # Kafka and the buffer cannot take it now (counted by the sink): the files
                # were rewound; try again later.
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception:  # noqa: BLE001 - one bad file must not stop the receiver
                log.exception("Unexpected error while tailing files")
                more = False
            if not more:
                self._stop.wait(self.poll_interval)

    # ---- one poll ----

    def poll(self) -> bool:
        """Discover files, then forward one batch per file; True if a file has more now."""
        self._discover()
        if time.monotonic() - self._pruned > PRUNE_EVERY:
            self._prune()
        more = False
        for key, tailer in list(self.tailers.items()):
            if self._stop.is_set():
                break  # every batch so far is committed; the rest waits for the next start
            try:
                more |= self._tail(tailer)
            except OSError as e:
                log.warning("Cannot read %s any more: %s", tailer.path, e)
                self._close(key, "unreadable")
            except BaseException:
                tailer.rewind()  # what was read but not committed is read again next time
                raise
        return more

    def _tail(self, tailer: Tailer) -> bool:
        if tailer.check_truncation():
            FileEvent(path=tailer.path, event="truncated").emit(self.sink.metrics, log)
        final = tailer.rotated and tailer.idle_polls >= 1
        # 1. Read after the committed offset; nothing is marked yet.
        batch = tailer.read_batch(MAX_BATCH_LINES, MAX_BATCH_BYTES, final)
        if batch.lines or batch.dead:
            # 2. Dead letters and lines durable (Kafka or buffer); raises if they cannot be.
            self._send(tailer, batch)
            faults.point("collector.filelog.before_offsets")  # a crash here repeats this batch
            tailer.idle_polls = 0
        else:
            tailer.idle_polls += 1
        if (batch.resume, batch.emitted) != (tailer.state.resume, tailer.state.emitted):
            # 3. Only now do the offsets move, and the file is written atomically.
            tailer.commit(batch)
            self.offsets.put(tailer.key, tailer.state)
            self.offsets.save()
        if tailer.rotated and tailer.idle_polls > IDLE_POLLS_BEFORE_CLOSE:
            self._close(tailer.key, "finished after rotation")
        return batch.more

    def _send(self, tailer: Tailer, batch: Batch) -> None:
        path, source = tailer.path, tailer.state.source
        received = len(batch.lines)
        ItemsReceived(receiver=RECEIVER, items=received).emit(self.sink.metrics, log, received)
        for start, end, reason in batch.dead:
            for offset in range(start, end, self.max_line):
                piece = os.pread(tailer.fd, min(self.max_line, end - offset), offset)
                self.sink.dead_letter(
                    RECEIVER, piece, reason=reason, source=source,
                    detail=f"bytes {offset}-{offset + len(piece)} of {path} "
                           f"(part of a line from offset {start}, {end - start} bytes)")
        if batch.lines:
            values = nimlogs.encode_batches(batch.lines, receiver="filelog", source=source,
                                            deployment=tailer.target.deployment, file=path)
            try:
                self.sink.forward_many(RECEIVER, [Entry(self.topic, source.encode(), v) for v in values],
                                       {self.topic: len(batch.lines)})
            except PermanentError as e:  # cannot happen with capped lines; never lose them silently
                for value in values:
                    self.sink.dead_letter(RECEIVER, value, reason=e.reason, detail=e.detail, source=source)

    # ---- files ----

    def _matched(self) -> dict[str, tuple[FilelogTarget, os.stat_result]]:
        found: dict[str, tuple[FilelogTarget, os.stat_result]] = {}
        for target in self.targets:
            for pattern in target.include:
                for path in sorted(glob.glob(pattern, recursive=True)):
                    if path in found or any(fnmatch.fnmatch(path, ex) for ex in target.exclude):
                        continue
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found[path] = (target, st)
        return found

    def _discover(self) -> None:
        first, self._first = self._first, False
        present = set()
        for path, (target, st) in self._matched().items():
            key = OffsetStore.key(st.st_dev, st.st_ino)
            present.add(key)
            tailer = self.tailers.get(key)
            if tailer is not None:
                tailer.rotated = False
                continue
            self._open(path, key, target, start_at_end=first and target.start_at == "end")
        for key, tailer in self.tailers.items():
            if key not in present and not tailer.rotated:
                tailer.rotated = True
                tailer.idle_polls = 0
                FileEvent(path=tailer.state.path, event="rotated").emit(self.sink.metrics, log)

    def _open(self, path: str, key: str, target: FilelogTarget, *, start_at_end: bool,
              rotated: bool = False) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # gone between the glob and the open: the next poll decides
        st = os.fstat(fd)
        if OffsetStore.key(st.st_dev, st.st_ino) != key:
            os.close(fd)  # replaced in the meantime
            return
        state = self.offsets.get(key)
        if state is not None and not matches(fd, state.fingerprint, state.fp_len):
            state = None  # the inode was reused by a different file
        event = "resumed"
        if state is None:
            digest, length = fingerprint(fd)
            offset = st.st_size if start_at_end else 0
            state = FileState(path, path, digest, length, target.format, offset, offset)
            event = "opened at end" if start_at_end else "opened"
        tailer = Tailer(fd, key, target, state, self.max_line)
        tailer.rotated = rotated
        self.tailers[key] = tailer
        self.offsets.put(key, state)
        FileEvent(path=path, event=event).emit(self.sink.metrics, log)

    def _close(self, key: str, why: str) -> None:
        tailer = self.tailers.pop(key)
        FileEvent(path=tailer.state.path, event=f"closed ({why})").emit(self.sink.metrics, log)
        tailer.close()

    def _prune(self) -> None:
        """Forget the offsets of files that no longer exist anywhere we could find them."""
        self._pruned = time.monotonic()
        gone = [key for key, state in self.offsets.files.items()
                if key not in self.tailers and _find_inode(os.path.dirname(state.path) or ".", key) is None]
        for key in gone:
            self.offsets.remove(key)
        if gone:
            self.offsets.save()

    def _recover_rotated(self) -> None:
        """Offsets of files no glob matches any more: finish a file rotated while we were
        down (found by inode beside its old path), forget files that are gone."""
        matched = {OffsetStore.key(st.st_dev, st.st_ino): (path, target)
                   for path, (target, st) in self._matched().items()}
        changed = False
        for key, state in list(self.offsets.files.items()):
            if key in matched:
                continue
            found = _find_inode(os.path.dirname(state.path) or ".", key)
            target = next((t for t in self.targets
                           if any(fnmatch.fnmatch(state.source, p) for p in t.include)), None)
            if found is None or target is None:
                self.offsets.remove(key)
                changed = True
                continue
            self._open(found, key, target, start_at_end=False, rotated=True)
            if key not in self.tailers:
                self.offsets.remove(key)
                changed = True
        if changed:
            self.offsets.save()


def _find_inode(directory: str, key: str) -> str | None:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    dev, ino = (int(x) for x in key.split(":"))
    for entry in entries:
        try:
            if entry.inode() == ino and entry.is_file(follow_symlinks=False) and entry.stat().st_dev == dev:
                return entry.path
        except OSError:
            continue
    return None


def build(collector: CollectorConfig, topics: TopicsConfig, sink: Sink, state_dir) -> FilelogReceiver:
    """The filelog receiver; `start()` begins tailing (nothing to do without targets)."""
    return FilelogReceiver(collector, topics, sink, state_dir)
