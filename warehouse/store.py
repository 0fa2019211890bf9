"""The DuckDB audit store: the only code that writes the file.

Rows arrive as canonical records; each batch is written through Arrow (polars) in one
transaction together with the consumer offsets it advances. Upserts keep the highest
version of every record; within a batch the newest version per key is chosen first,
because DuckDB's ON CONFLICT keeps the first of two rows with the same key silently.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable

import duckdb
import orjson
import polars as pl

from nimtrail import faults, records
from warehouse.schema import migrate

TABLES = {
    "model_call": "model_calls",
    "tool_action": "tool_actions",
    "deployment": "deployments",
    "finding": "findings",
    "metric_sample": "metric_samples",
}

_SCALARS = {
    "VARCHAR": pl.Utf8, "INTEGER": pl.Int32, "BIGINT": pl.Int64, "DOUBLE": pl.Float64,
    "BOOLEAN": pl.Boolean, "JSON": pl.Utf8, "TIMESTAMP": pl.Utf8, "VARCHAR[]": pl.List(pl.Utf8),
}


class Table:
    """One record kind's table: its columns and how a batch of records becomes a frame."""

    def __init__(self, kind: str, name: str, columns: list[tuple[str, str]]):
        self.kind = kind
        self.name = name
        self.columns = [c for c, _ in columns]
        self.json_columns = [c for c, t in columns if t == "JSON"]
        self.time_columns = [c for c, t in columns if t.startswith("TIMESTAMP")]
        self.schema = {c: _SCALARS[t] for c, t in columns}
        self.key = list(records.KEYS[kind])
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in self.columns if c not in self.key)
        self.upsert_sql = (
            f'INSERT INTO {name} BY NAME SELECT * FROM frame '
            f'ON CONFLICT ({", ".join(self.key)}) DO UPDATE SET {updates} '
            f'WHERE excluded.version > {name}.version'
        )

    def frame(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        # Build fresh rows (the caller's records stay untouched, so a failed batch can be
        # retried message by message); nested values are stored as JSON text.
        json_columns = self.json_columns
        frame = pl.DataFrame(
            [{c: (orjson.dumps(row[c]).decode() if c in json_columns and row.get(c) is not None
                  else row.get(c)) for c in self.columns} for row in rows],
            schema=self.schema, strict=True)
        if self.time_columns:
            frame = frame.with_columns(
                pl.col(c).str.to_datetime(time_zone="UTC", strict=True).dt.replace_time_zone(None)
                for c in self.time_columns)
        # Newest version per key first, then one row per key (see the module docstring).
        return frame.sort("version", descending=True).unique(subset=self.key, keep="first")


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path))
        migrate(self.con)
        self.tables = {kind: self._table(kind, name) for kind, name in TABLES.items()}
        self._write_lock = threading.Lock()

    def _table(self, kind: str, name: str) -> Table:
        cols = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position", [name]).fetchall()
        return Table(kind, name, cols)

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

    def write(self, frames: dict[str, pl.DataFrame],
              offsets: Iterable[tuple[str, int, int]]) -> None:
        """Upsert the frames and advance the offsets in one transaction."""
        with self._write_lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                for kind, frame in frames.items():
                    con.register("frame", frame.to_arrow())
                    con.execute(self.tables[kind].upsert_sql)
                    con.unregister("frame")
                con.executemany(
                    "INSERT INTO consumer_offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                    "DO UPDATE SET next_offset = excluded.next_offset",
                    [list(o) for o in offsets])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        faults.point("warehouse.after_commit")

    def count(self, kind: str) -> int:
        return self.reader().execute(f"SELECT count(*) FROM {TABLES[kind]}").fetchone()[0]

    def close(self) -> None:
        self.con.close()
