"""The DuckDB audit store: the only code that writes the file.

Rows arrive as canonical records; each batch is written through Arrow (polars) in one
transaction together with the consumer offsets it advances and the ledger entry that
hashes it. Upserts keep the highest version of every record; within a batch the newest
version per key is chosen first (a plain INSERT would refuse the second of two rows with
the same key, and DuckDB's ON CONFLICT would keep the first one silently). Why the write
path is built the way it is: docs/warehouse.md, "Writing: the transaction".
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from nimtrail import faults
from nimtrail.config import WarehouseConfig
from warehouse import latency_rollup
from warehouse.key_index import ABSENT, NO_TIME, KeyIndex, ValueIndex, key_hashes, seconds
from warehouse.ledger import Ledger
from warehouse.spilled_runs import SpillDirectory
from warehouse.schema import migrate
from warehouse.sql import scalar
from warehouse.tables import (LOOKUP_COLUMNS, RECORD_TABLES, Table, ledger_items, load_tables, observed_within,
                              windows_of)

log = logging.getLogger(__name__)

LEDGER_MIGRATION = "0002_ledger.sql"
# Up to this many rows, a write binds its values instead of registering Arrow frames
# (an access-log entry, a hold: registering costs more than the rows themselves).
SMALL_WRITE = 64
# DuckDB checkpoints (moves the write-ahead log into the file) when the log passes this
# size. At its 16 MiB default, ingest checkpoints every few polls and the checkpoints cost
# about as much as the commits; a larger log is replayed on start and held in memory
# until then, so not much larger. Every commit is durable in the log either way.
WAL_AUTOCHECKPOINT = "64MB"
# Rows per batch when a key index reads a table's keys back.
KEY_READ_BATCH = 1_000_000


def duckdb_config(settings: WarehouseConfig) -> dict[str, str]:
    """DuckDB's memory limit and threads from `warehouse.memory_limit` / `warehouse.threads`:
    without a limit DuckDB may keep 80% of the machine's RAM, and it keeps every block it
    read (every poll reads the key columns of the tables it writes) until it reaches it."""
    # DuckDB allocates through its own jemalloc, which keeps freed memory for reuse: up to
    # 128 MB after each task by default, outside memory_limit. A soak's RSS grew ~300 MB past
    # what DuckDB reported holding; flushing past an eighth of the limit, and purging in the
    # background, gives it back.
    flush = max(settings.memory_limit // 8, 16 * 1024 * 1024)
    return {"memory_limit": f"{settings.memory_limit // 1024}KiB", "threads": str(settings.threads),
            "allocator_flush_threshold": f"{flush // 1024}KiB", "allocator_background_threads": "true"}


class Store:
    def __init__(self, path: Path, settings: WarehouseConfig | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path), config=duckdb_config(settings or WarehouseConfig()))
        self.con.execute(f"SET wal_autocheckpoint = '{WAL_AUTOCHECKPOINT}'")
        applied = migrate(self.con)
        self.by_name: dict[str, Table] = load_tables(self.con)
        self.tables = {kind: self.by_name[name] for kind, name in RECORD_TABLES.items()}
        self.ledger = Ledger(self.con)
        # Built on a table's first write (reading its keys back), see key_index.py.
        self._key_indexes: dict[str, KeyIndex] = {}
        self._spill = SpillDirectory(self.path.with_name(self.path.name + ".key-index"))
        self._index_pending: list[tuple[str, Any, Any]] = []  # keys written, until COMMIT
        # Built with the key index: where each value of a lookup column was written.
        self._value_indexes: dict[tuple[str, str], ValueIndex] = {}
        # Odd from just before a COMMIT until the key indexes hold its keys: while it is, a
        # key the index lacks may be stored all the same (see written_where).
        self._commit_seq = 0
        self._write_lock = threading.Lock()
        if LEDGER_MIGRATION in applied:
            self._adopt_existing_rows()

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A connection for one reading thread (DuckDB connections are not shared across
        threads; cursors of the same database see committed data)."""
        return self.con.cursor()

    def offsets(self) -> dict[tuple[str, int], int]:
        rows = self.con.execute("SELECT topic, partition, next_offset FROM consumer_offsets").fetchall()
        return {(t, p): o for t, p, o in rows}

    def frames(self, batches: dict[str, list[dict[str, Any]]]) -> dict[str, pl.DataFrame]:
        """Validate and convert records to frames; raises on records of the wrong shape."""
        return {kind: self.tables[kind].frame(rows) for kind, rows in batches.items() if rows}

    def frames_of(self, batches: dict[str, list[list[dict[str, Any]] | pa.Table]]) -> dict[str, pl.DataFrame]:
        """`frames` of each kind's audit messages, each decoded to its records or (the
        columnar form) its columns; raises on records of the wrong shape."""
        return {kind: self.tables[kind].frame_of(parts) for kind, parts in batches.items() if parts}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The single writer's transaction: serialised with every other write, and the
        ledger head only advances if it commits."""
        with self._write_lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                self._commit_seq += 1
                con.execute("COMMIT")
            except BaseException:
                self._index_pending.clear()
                self.ledger.rolled_back()
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                self._commit_seq += self._commit_seq % 2
                raise
            self.ledger.committed()
            for name, hashes, secs in self._index_pending:
                self._key_indexes[name].add(hashes, secs)
            self._index_pending.clear()
            self._commit_seq += 1

    @contextlib.contextmanager
    def snapshot(self, under_lock: Callable[[], Any] | None = None
                 ) -> Iterator[tuple[duckdb.DuckDBPyConnection, Any]]:
        """A read-only view fixed at one point between writes (for reads that span many
        statements, like verification and reports); `under_lock` runs at that same point,
        e.g. to read the digest files that belong with it."""
        cursor = self.con.cursor()
        with self._write_lock:
            cursor.execute("BEGIN TRANSACTION")
            cursor.execute("SELECT count(*) FROM ledger").fetchall()  # pin the snapshot now
            extra = under_lock() if under_lock else None
        try:
            yield cursor, extra
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            cursor.close()

    def put(self, con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame) -> pl.DataFrame:
        """Upsert `frame` (from `Table.frame`: newest version per key, canonical JSON text)
        inside an open transaction; returns the ledger lines of the rows that actually
        changed the table."""
        if frame.height <= SMALL_WRITE and not table.self_indexed:
            return self._put_small(con, table, frame)
        # One registered frame name, replaced as the write goes on (each registration and
        # each statement costs about a millisecond, whatever the rows).
        window: tuple[int, int] | None = None  # where the rows replaced are (None: anywhere)
        try:
            if table.self_indexed:
                fresh, new, window = self._fresh_indexed(con, table, frame)
            else:
                fresh, new = self._fresh(con, table, frame)
            if fresh.height == 0:
                return ledger_items(table, fresh, [])
            # the calls' latency histograms
            latency_rollup.before_put(con, table, fresh, new, observed_within(window))
            hashes = table.row_hashes(fresh, json_canonical=True)
            fresh = fresh.with_columns(pl.Series("row_hash", hashes, dtype=pl.Utf8))
            if new is not None and not new.all():
                # Rows that replace an older version: the old row goes, the new one is
                # inserted with the new keys below. They were just found to be newer, under
                # the write lock, so the replacement needs no version condition; in DuckDB
                # a delete and one insert cost a fraction of ON CONFLICT DO UPDATE.
                con.register("frame", fresh.filter(~new).select(table.key).to_arrow())
                condition, params = observed_within(window)
                con.execute(f"{table.delete_sql} AND {condition}", params)
            con.register("frame", fresh.to_arrow())
            con.execute(table.insert_sql)
            if table.self_indexed:
                # Recorded once COMMIT succeeds: a rolled-back replacement must leave the key
                # at the second of the row that is still there.
                self._index_pending.append((table.name, key_hashes(fresh, table.key), seconds(fresh)))
                # Before COMMIT: the value indexes may name more than is stored, never less.
                for column in LOOKUP_COLUMNS.get(table.name, ()):
                    self._value_indexes[(table.name, column)].extend_from([fresh], column)
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister("frame")
        return ledger_items(table, fresh, hashes)

    def _put_small(self, con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame) -> pl.DataFrame:
        """`put` for a few rows: key lookups and bound values instead of registered frames."""
        fresh = self._fresh_small(con, table, frame)
        if fresh.height == 0:
            return ledger_items(table, fresh, [])
        latency_rollup.before_put(con, table, fresh, fresh["_new"])
        hashes = table.row_hashes(fresh, json_canonical=True)
        fresh = fresh.with_columns(pl.Series("row_hash", hashes, dtype=pl.Utf8))
        for upsert in (False, True):
            part = fresh.filter(pl.col("_new") != upsert)
            if part.height:
                con.execute(table.values_sql(part.height, upsert),
                            [v for row in part.select(*table.columns, "row_hash").iter_rows() for v in row])
        return ledger_items(table, fresh, hashes)

    @staticmethod
    def _fresh(con: duckdb.DuckDBPyConnection, table: Table,
               frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None]:
        """The rows of `frame` that change the table, and which of them are new keys (None:
        all of them). A changing row is a new key or a higher version than the stored one;
        a re-delivered or older version is a no-op and must not enter the ledger either.
        Only the keys go to DuckDB and only (key, version) of the keys it already holds
        come back (DuckDB reads just the key and version columns)."""
        keys = frame.select(table.key)
        con.register("frame", keys.to_arrow())
        stored = con.sql(table.stored_join_sql).pl()
        if stored.height == 0:
            return frame, None
        return _changing(table, frame, stored.cast({k: keys.schema[k] for k in table.key}))

    def _fresh_indexed(self, con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame
                       ) -> tuple[pl.DataFrame, pl.Series | None, tuple[int, int] | None]:
        """`_fresh` for a table without a DuckDB index: the key index says which keys are
        certainly new and in which seconds of `observed_at` the others were written; DuckDB
        is asked only about those, only in those seconds. Also returns that window (None:
        some stored row has no time, every row must be read)."""
        where = self._key_index(con, table).lookup(key_hashes(frame, table.key))
        maybe = where != ABSENT
        if not maybe.any():
            return frame, None, None
        candidates = where[maybe]
        window = None if (candidates == NO_TIME).any() else (int(candidates.min()), int(candidates.max()))
        condition, params = observed_within(window)
        keys = frame.filter(pl.Series(maybe)).select(table.key)
        con.register("frame", keys.to_arrow())
        stored = con.sql(f"{table.stored_join_sql} WHERE {condition}", params=params).pl()
        if stored.height == 0:  # hash collisions, or rows retention deleted
            return frame, None, window
        return (*_changing(table, frame, stored.cast({k: keys.schema[k] for k in table.key})), window)

    def _key_index(self, con: duckdb.DuckDBPyConnection, table: Table) -> KeyIndex:
        """The table's key index, and its lookup columns' value indexes, built from the
        table in one read on its first write."""
        index = self._key_indexes.get(table.name)
        if index is None:
            index = KeyIndex(self._spill)
            lookups = LOOKUP_COLUMNS.get(table.name, ())
            values = {column: ValueIndex(self._spill) for column in lookups}
            columns = ", ".join(f't."{c}"' for c in [*table.key, *lookups])
            reader = con.sql(f"SELECT {columns}, t.observed_at FROM {table.name} t").to_arrow_reader(KEY_READ_BATCH)
            try:
                for batch in reader:
                    frame = pl.from_arrow(batch)
                    index.extend_from([frame], table.key)
                    for column, value_index in values.items():
                        value_index.extend_from([frame], column)
            finally:
                reader.close()
            # Only once whole: a partial one would lie.
            self._value_indexes.update({(table.name, column): v for column, v in values.items()})
            self._key_indexes[table.name] = index
            log.info("Key index of %s: %s keys, %.1f MB (lookup columns %.1f MB)", table.name, len(index),
                     index.nbytes / 1e6, sum(v.nbytes for v in values.values()) / 1e6)
        return index

    def written_where(self, table_name: str, column: str, values: list[Any]) -> list[tuple[int, int]] | None:
        """The windows of `observed_at` seconds in which the rows of `table_name` whose
        `column` (its one-column key, or a lookup column) holds any of `values` were
        written: [] when no row holds any, None when the indexes cannot say (read every row).

        A hint for readers. The key index may be a commit behind: a key it names at a
        second may have moved (read everything when that finds nothing), and a key it
        lacks is certainly absent only when no commit ran while it was asked."""
        table = self.by_name.get(table_name)
        if table is None:
            return None
        if not values:
            return []
        # One hashing plan and one search per index run for all the values: a page of
        # calls asks for each of its calls' actions at once.
        hashes = key_hashes(pl.DataFrame({column: values}, schema={column: pl.Utf8}), [column])
        if table.key == [column]:
            index = self._key_indexes.get(table_name)
            if index is None:
                return None
            before = self._commit_seq
            secs = index.lookup(hashes)
            present = secs[secs != ABSENT]
            if len(present) < len(secs) and not (before % 2 == 0 and self._commit_seq == before):
                return None
        else:
            value_index = self._value_indexes.get((table_name, column))
            if value_index is None:
                return None
            present = value_index.seconds(hashes)
        if (present == NO_TIME).any():
            return None
        return windows_of((int(s), int(s)) for s in np.unique(present))

    def forget_key_indexes(self) -> None:
        """Rows were deleted (retention): rebuild the key indexes on the next write, so that
        they stop holding the keys of rows that are gone."""
        with self._write_lock:  # not between a write's lookups and its COMMIT
            self._key_indexes.clear()
            self._value_indexes.clear()

    def key_index_bytes(self) -> int:
        indexes = [*list(self._key_indexes.values()), *list(self._value_indexes.values())]  # read by another thread
        return sum(index.nbytes for index in indexes)

    @staticmethod
    def _fresh_small(con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame) -> pl.DataFrame:
        """`_fresh` for a few rows, by point lookups of their keys: the rows that are new
        (`_new`) or carry a higher version than the stored one."""
        keys = list(frame.select(table.key).iter_rows())
        stored = table.stored_versions(con, keys)
        new, keep = [], []
        for key, version in zip(keys, frame["version"].to_list()):
            known = key in stored
            new.append(not known)
            # NULL semantics of the SQL: a null version is never higher
            keep.append(not known or (version is not None and stored[key] is not None
                                      and version > stored[key]))
        frame = frame.with_columns(pl.Series("_new", new, dtype=pl.Boolean))
        return frame if all(keep) else frame.filter(pl.Series(keep, dtype=pl.Boolean))

    def record(self, con: duckdb.DuckDBPyConnection, table_name: str,
               rows: list[dict[str, Any]]) -> pl.DataFrame:
        """Write rows of one of the warehouse's own tables (access log, holds, purges,
        exports, checkpoints) inside an open transaction; returns their ledger lines."""
        table = self.by_name[table_name]
        return self.put(con, table, table.frame(rows))

    def write(self, frames: dict[str, pl.DataFrame],
              offsets: Iterable[tuple[str, int, int]]) -> None:
        """Upsert the frames, extend the ledger and advance the offsets in one transaction."""
        offsets = [list(o) for o in offsets]
        with self.transaction() as con:
            # 1. the rows (only those that change the table), 2. their ledger entry,
            # 3. the consumer offsets; 4. COMMIT makes all three durable at once.
            items = [self.put(con, self.tables[kind], frame) for kind, frame in frames.items()]
            items = pl.concat(items) if items else None
            if items is not None and items.height:
                self.ledger.append(con, "batch", {"offsets": sorted(offsets)}, items)
            if offsets:
                # one statement (executemany costs a round trip per row); only the number
                # of placeholders comes from here, the values are bound
                rows = ", ".join("(?, ?, ?)" for _ in offsets)
                con.execute(f"INSERT INTO consumer_offsets VALUES {rows} ON CONFLICT (topic, partition) "
                            "DO UPDATE SET next_offset = excluded.next_offset",
                            [v for o in offsets for v in o])
        # A crash here (after COMMIT, before anything else) must lose and double nothing.
        faults.point("warehouse.after_commit")

    def _adopt_existing_rows(self) -> None:
        """The ledger was just added to a store that already held rows: hash them into a
        genesis entry, so what was there before is covered from now on."""
        with self.transaction() as con:
            parts = []
            for table in self.tables.values():
                frame = con.sql(f"SELECT * EXCLUDE (row_hash) FROM {table.name}").pl()
                if frame.height == 0:
                    continue
                hashes = table.row_hashes(frame)
                keyed = frame.select(table.key).with_columns(pl.Series("row_hash", hashes))
                con.register("hashes", keyed.to_arrow())
                join = " AND ".join(f't."{k}" = h."{k}"' for k in table.key)
                con.execute(f"UPDATE {table.name} t SET row_hash = h.row_hash FROM hashes h WHERE {join}")
                con.unregister("hashes")
                parts.append(ledger_items(table, frame, hashes))
            if parts:
                items = pl.concat(parts)
                self.ledger.append(con, "genesis", {"adopted_rows": items.height}, items)
                log.info("Recorded %s rows written before the ledger existed in a genesis entry",
                         items.height)

    def memory(self) -> dict[str, int]:
        """DuckDB's memory by what holds it (buffer pool of table blocks, indexes, rows not
        yet checkpointed, query state), in bytes; only what `memory_limit` bounds."""
        with self.reader() as cursor:
            rows = cursor.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall()
        return {tag: used for tag, used in rows}

    def count(self, kind: str) -> int:
        return scalar(self.reader(), f"SELECT count(*) FROM {RECORD_TABLES[kind]}")

    def close(self) -> None:
        self.con.close()


def _changing(table: Table, frame: pl.DataFrame, stored: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """The rows of `frame` that are new keys or newer than their stored version (`stored`:
    key columns and `_stored`), and which of them are new keys."""
    joined = frame.join(stored, on=table.key, how="left", maintain_order="left")
    # NULL semantics of SQL: a null version is never higher
    joined = joined.filter(pl.col("_stored").is_null() | (pl.col("version") > pl.col("_stored")))
    return joined.drop("_stored"), joined.get_column("_stored").is_null()
