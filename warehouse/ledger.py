"""The hash chain over everything the warehouse writes.

Entry n (seq = n) is

    rows_sha256 = SHA-256( for each ledger line in pos order:
                             canonical_bytes([tbl, key, version, row_hash]) + b"\\n" )
    entry_hash  = SHA-256( canonical_bytes({"seq": n, "prev": entry_hash(n-1),
                                            "at": committed_at, "kind": kind,
                                            "detail": detail, "count": line count,
                                            "rows_sha256": rows_sha256}) )

with entry_hash(0) = 64 zeros and row_hash null for a deleted row. An entry is written in
the same DuckDB transaction as the rows it describes, so the chain and the tables can
never disagree after a crash. `Ledger` keeps the head in memory; it only advances once the
transaction that wrote the entry has committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

import duckdb
import orjson
import polars as pl

from nimtrail.records import canonical_bytes
from warehouse import rowbytes
from warehouse.sql import one
from warehouse.tables import iso

GENESIS = "0" * 64
# Up to this many lines, bound values instead of a registered Arrow frame (cheaper).
SMALL_ENTRY = 64
# From this many lines, the rows digest's bytes are built by polars (warehouse.rowbytes).
BULK_LINES = 64
ITEM_SCHEMA = {"tbl": pl.Utf8, "key": pl.Utf8, "version": pl.Int32, "row_hash": pl.Utf8}


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    kind: str | None = None


def rows_digest(lines: Iterable[tuple[str, str, int | None, str | None]]) -> str:
    # A line is a flat list of strings, ints and nulls: nothing for canonical_bytes to
    # sort, so plain orjson gives its bytes. Hashed in one update: the same digest as one
    # update per line, without a call per line.
    dumps = orjson.dumps
    data = b"\n".join([dumps(list(line)) for line in lines])
    return hashlib.sha256(data + b"\n" if data else b"").hexdigest()


def items_digest(items: pl.DataFrame) -> str:
    """`rows_digest` of a frame of ledger lines (tbl, key, version, row_hash)."""
    columns = ("tbl", "key", "version", "row_hash")
    if items.height < BULK_LINES or not rowbytes.encoder_agrees():
        return rows_digest(zip(*(items.get_column(c).to_list() for c in columns)))
    return hashlib.sha256(rowbytes.lines_text(items, columns) + b"\n").hexdigest()


def entry_hash(seq: int, prev: str, at: str, kind: str, detail: Any, count: int,
               rows_sha256: str) -> str:
    return hashlib.sha256(canonical_bytes({
        "seq": seq, "prev": prev, "at": at, "kind": kind, "detail": detail,
        "count": count, "rows_sha256": rows_sha256})).hexdigest()


def now() -> dt.datetime:
    """Naive UTC with microseconds: how the store keeps time."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def read_head(con: duckdb.DuckDBPyConnection) -> Head:
    row = one(con, "SELECT seq, entry_hash, kind FROM ledger ORDER BY seq DESC LIMIT 1")
    return Head(row[0], row[1], row[2]) if row else Head(0, GENESIS)


class Ledger:
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.head = read_head(con)
        self._pending: Head | None = None

    def append(self, con: duckdb.DuckDBPyConnection, kind: str, detail: dict[str, Any],
               items: pl.DataFrame | None) -> Head:
        """Write the next entry inside the caller's open transaction."""
        if self._pending is not None:
            raise RuntimeError("one ledger entry per transaction")
        items = items if items is not None else pl.DataFrame(schema=ITEM_SCHEMA)
        seq, prev = self.head.seq + 1, self.head.hash
        at = now()
        digest = items_digest(items)
        # detail round-trips through JSON text in the table; hash what will be read back.
        detail = orjson.loads(canonical_bytes(detail))
        entry = entry_hash(seq, prev, iso(at), kind, detail, items.height, digest)
        con.execute("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [seq, prev, entry, at, kind, canonical_bytes(detail).decode(),
                     items.height, digest])
        if 0 < items.height <= SMALL_ENTRY:
            con.execute("INSERT INTO ledger_rows (seq, pos, tbl, key, version, row_hash) VALUES "
                        + ", ".join("(?, ?, ?, ?, ?, ?)" for _ in range(items.height)),
                        [v for pos, (tbl, key, version, row_hash) in enumerate(
                            items.select("tbl", "key", "version", "row_hash").iter_rows())
                         for v in (seq, pos, tbl, key, version, row_hash)])
        elif items.height:
            lines = items.with_columns(pl.lit(seq, pl.Int64).alias("seq"),
                                       pl.int_range(items.height, dtype=pl.Int32).alias("pos"))
            con.register("ledger_items", lines.to_arrow())
            try:
                con.execute("INSERT INTO ledger_rows BY NAME SELECT * FROM ledger_items")
            finally:
                con.unregister("ledger_items")
        self._pending = Head(seq, entry, kind)
        return self._pending

    def committed(self) -> None:
        if self._pending is not None:
            self.head, self._pending = self._pending, None

    def rolled_back(self) -> None:
        self._pending = None
