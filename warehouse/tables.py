"""The store's ledgered tables: their columns, keys, and the canonical form of a row.

A row's canonical form is what the ledger hashes, and it must be recomputable from the
table alone: every column except `row_hash`, timestamps as ISO-8601 UTC with microseconds
(`2025-01-31T10:15:00.000000Z`), JSON columns parsed (so key order and spacing do not
matter), everything else as DuckDB returns it; a column added to the table after it held
rows (LATE_COLUMNS) only when it is not null, so that rows written before it existed
keep their hashes. The bytes are
`nimtrail.records.canonical_bytes` of that mapping (sorted keys, no spaces); the row hash
is their SHA-256. Ingest, retention and verification all go through `Table.row_hashes`,
so they can never disagree on the format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import operator
from typing import Any, Iterable, Iterator

import duckdb
import orjson
import polars as pl
import pyarrow as pa

from nimtrail import records, timestamps
from nimtrail.columnar import ARROW_TYPES
from warehouse import rowbytes

# Record kind -> table, for the canonical records the pipeline produces.
RECORD_TABLES = {
    "model_call": "model_calls",
    "tool_action": "tool_actions",
    "deployment": "deployments",
    "finding": "findings",
    "metric_sample": "metric_samples",
    "span": "trace_spans",
}

# Every table whose rows the ledger covers, with its key columns.
KEYS: dict[str, tuple[str, ...]] = {
    **{table: records.KEYS[kind] for kind, table in RECORD_TABLES.items()},
    "access_log": ("access_id",),
    "legal_holds": ("hold_id",),
    "retention_purges": ("purge_id",),
    "exports": ("export_id",),
    "checkpoints": ("digest_seq",),
}

# The large tables: no DuckDB index (migration 0010); the warehouse finds their stored keys
# with its own compact index (warehouse/key_index.py), which stays small where DuckDB's
# would hold every key in memory.
SELF_INDEXED = frozenset({"model_calls", "tool_actions", "findings", "trace_spans", "metric_samples"})
# Columns of those tables by which queries look rows up other than by key (trace-back: a
# call's actions, the call that asked for a tool call, the findings about a subject); the
# warehouse indexes where each value was written (key_index.ValueIndex).
LOOKUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "tool_actions": ("call_id", "tool_call_id"),
    "model_calls": ("tool_call_ids",),
    "findings": ("subject_ids",),
}

# Columns added to a ledgered table by a later migration: in a row's canonical form only
# when not null (a row stored before the column existed reads it as null, and its hash in
# the ledger was taken without it).
LATE_COLUMNS: dict[str, frozenset[str]] = {
    "access_log": frozenset({"person"}),  # 0007_people.sql
    "exports": frozenset({"person"}),
}

# The column that says how old a row is, for retention, archives and reports.
AGE_COLUMNS = {
    "model_calls": "coalesce(t.started_at, t.observed_at)",
    "tool_actions": "coalesce(t.started_at, t.observed_at)",
    "findings": "coalesce(t.detected_at, t.observed_at)",
    "deployments": "coalesce(t.valid_from, t.observed_at)",
    "metric_samples": "coalesce(t.ts, t.observed_at)",
    "trace_spans": "coalesce(t.started_at, t.observed_at)",
    "access_log": "t.accessed_at",
}
# What retention judges expiry by: never a client's claimed time alone, but the later of it
# and `observed_at`, the time the pipeline itself saw the record (a record claiming 1970 is
# not purged on arrival). The access log's time is the warehouse's own; a deployment
# version's valid_from is the operator's, from its registration, not a sender's clock.
EXPIRY_COLUMNS = {table: age if table in ("access_log", "deployments") else f"greatest({age}, t.observed_at)"
                  for table, age in AGE_COLUMNS.items()}

_SCALARS = {
    "VARCHAR": pl.Utf8, "INTEGER": pl.Int32, "BIGINT": pl.Int64, "DOUBLE": pl.Float64,
    "BOOLEAN": pl.Boolean, "JSON": pl.Utf8, "TIMESTAMP": pl.Utf8, "VARCHAR[]": pl.List(pl.Utf8),
}

BULK_HASH_ROWS = 64

# The rows written in a span of seconds [lo, hi] (bound as microseconds): a filter on the
# column rows are appended in order of, so DuckDB skips every other row group.
OBSERVED_WITHIN = "t.observed_at >= make_timestamp(?::BIGINT) AND t.observed_at < make_timestamp(?::BIGINT)"


def observed_within(window: tuple[int, int] | None) -> tuple[str, list[int]]:
    """The SQL condition (and its parameters) for rows observed in `window` (seconds, both
    ends included); None: every row."""
    if window is None:
        return "TRUE", []
    lo, hi = window
    return OBSERVED_WITHIN, [lo * 1_000_000, (hi + 1) * 1_000_000]


def observed_within_any(windows: list[tuple[int, int]] | None) -> tuple[str, list[int]]:
    """`observed_within` for several windows (DuckDB prunes row groups for an OR of them)."""
    if not windows:
        return observed_within(None)
    parts = [observed_within(window) for window in windows]
    return "(" + " OR ".join(f"({condition})" for condition, _ in parts) + ")", [p for _, ps in parts for p in ps]


def windows_of(spans: Iterable[tuple[int, int]], gap: int = 60, most: int = 16) -> list[tuple[int, int]]:
    """Spans of seconds (both ends included) as a few sorted windows that cover them all:
    spans closer than `gap` share one (a row group holds a minute or more of a large
    table's rows, so that reads nothing more), and the gap widens until at most `most`
    windows are left."""
    spans = sorted(spans)
    while True:
        windows: list[tuple[int, int]] = []
        for lo, hi in spans:
            if windows and lo - windows[-1][1] <= gap:
                windows[-1] = (windows[-1][0], max(hi, windows[-1][1]))
            else:
                windows.append((lo, hi))
        if len(windows) <= most:
            return windows
        gap *= 4


def iso(value: dt.datetime | None) -> str | None:
    return timestamps.iso(value) if value is not None else None


class Table:
    """One ledgered table: its columns and how records become a frame and rows hashes."""

    def __init__(self, name: str, columns: list[tuple[str, str]], kind: str | None = None):
        self.name = name
        self.kind = kind or name
        columns = [(c, t) for c, t in columns if c != "row_hash"]
        self.columns = [c for c, _ in columns]
        self.sorted_columns = sorted(self.columns)  # as canonical_bytes orders a row's keys
        self._fields = operator.itemgetter(*self.columns)
        self.json_columns = [c for c, t in columns if t == "JSON"]
        self.time_columns = [c for c, t in columns if t.startswith("TIMESTAMP")]
        self.float_columns = [c for c, t in columns if t == "DOUBLE"]
        self.late_columns = [c for c in self.sorted_columns if c in LATE_COLUMNS.get(name, ())]
        self.schema = {c: _SCALARS[t] for c, t in columns}
        self.arrow_types = {c: ARROW_TYPES[t] for c, t in columns}
        self.key = list(KEYS[name])
        self.self_indexed = name in SELF_INDEXED
        # Key columns come from code, never from input: safe to place in SQL text.
        self.key_sql = "concat_ws('|', " + ", ".join(f'CAST(t."{k}" AS VARCHAR)' for k in self.key) + ")"
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in [*self.columns, "row_hash"]
                            if c not in self.key)
        # Large writes: a plain INSERT of the registered frame (rows they replace deleted
        # first, see Store.put). Small writes bind values and upsert with ON CONFLICT.
        self.insert_sql = f"INSERT INTO {name} BY NAME SELECT * FROM frame"
        self.on_conflict = (f'ON CONFLICT ({", ".join(self.key)}) DO UPDATE SET {updates} '
                            f'WHERE excluded.version > {name}.version')
        self._values_head = (f'INSERT INTO {name} ('
                             + ", ".join(f'"{c}"' for c in [*self.columns, "row_hash"]) + ") VALUES ")
        self._row_placeholders = "(" + ", ".join("?" for _ in range(len(self.columns) + 1)) + ")"
        self._stored_sql = (f'SELECT {", ".join(f"t.{k}" for k in self.key)}, t.version '
                            f'FROM {name} t WHERE ')
        self._key_match = "(" + " AND ".join(f't."{k}" = ?' for k in self.key) + ")"
        join = " AND ".join(f'f."{k}" = t."{k}"' for k in self.key)
        # The stored version of each key in `frame` (a frame of key columns): a semi-join
        # that reads only key and version, so the batch itself never comes back out.
        self.stored_join_sql = (f'SELECT {", ".join(f"t.{k}" for k in self.key)}, t.version AS _stored '
                                f'FROM {name} t SEMI JOIN frame f ON {join}')
        # The rows whose keys are in `frame` (a frame of key columns).
        self.delete_sql = f'DELETE FROM {name} t USING frame f WHERE {join}'

    def frame(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        """Records (timestamps as ISO strings, JSON values as Python values) -> a frame with
        the newest version per key."""
        return self._framed(self._arrow_of(rows))

    def frame_of(self, parts: list[list[dict[str, Any]] | pa.Table]) -> pl.DataFrame:
        """`frame` of several batches of one kind, each either records or the columns of an
        audit message (`nimtrail.columnar`), as they arrived."""
        tables = [self._arrow_of(part) if isinstance(part, list) else self._conformed(part) for part in parts]
        return self._framed(tables[0] if len(tables) == 1 else pa.concat_tables(tables))

    def _arrow_of(self, rows: list[dict[str, Any]]) -> pa.Table:
        # Column by column (much cheaper than a frame from row dicts); the caller's records
        # stay untouched, so a failed batch can be retried message by message. Nested
        # values are stored as JSON text.
        try:
            # Records carry every field (records.new): one C call per row, then transposed.
            data = dict(zip(self.columns, map(list, zip(*map(self._fields, rows))))) if rows else {}
        except (KeyError, TypeError):
            data = {}
        if len(data) != len(self.columns):  # some record lacks a field: it is null
            data = {c: [row.get(c) for row in rows] for c in self.columns}
        # Nested values are stored as their canonical JSON (sorted keys, no spaces): what the
        # row hash embeds, so hashing at ingest need not parse them again.
        canonical = records.canonical_bytes
        for c in self.json_columns:
            data[c] = [None if v is None else canonical(v).decode() for v in data[c]]
        # Through Arrow: its C conversion checks types as strictly and is far cheaper than
        # polars' per-element path for list columns.
        return pa.Table.from_arrays([pa.array(data[c], type=self.arrow_types[c]) for c in self.columns],
                                    names=self.columns)

    def _conformed(self, table: pa.Table) -> pa.Table:
        """Columns as an audit message carried them -> this table's columns and types: a
        field the message lacks is null, one it has in another type is cast (raising when a
        value does not convert), one the table lacks is left out, as `frame` leaves out a
        record's unknown keys."""
        canonical, loads = records.canonical_bytes, orjson.loads
        arrays = []
        for c in self.columns:
            type_ = self.arrow_types[c]
            if c not in table.column_names:
                arrays.append(pa.nulls(table.num_rows, type_))
                continue
            column = table.column(c)
            if column.type != type_:
                column = column.cast(type_)
            if c in self.json_columns:
                # The row hash embeds this text as it is (json_canonical): whoever wrote the
                # message, what is stored must be the canonical JSON (and JSON at all).
                column = pa.array([None if v is None else canonical(loads(v)).decode()
                                   for v in column.to_pylist()], type=type_)
            arrays.append(column)
        return pa.Table.from_arrays(arrays, names=self.columns)

    def _framed(self, table: pa.Table) -> pl.DataFrame:
        frame = pl.from_arrow(table)
        if self.time_columns:
            frame = frame.with_columns(
                pl.col(c).str.to_datetime(time_zone="UTC", strict=True, time_unit="us")
                .dt.replace_time_zone(None)
                for c in self.time_columns)
        # DuckDB's ON CONFLICT keeps the first of two rows with the same key silently:
        # reduce the batch to the newest version per key first (when a key repeats at all).
        if frame.height <= 1 or not frame.select(self.key).is_duplicated().any():
            return frame
        return frame.sort("version", descending=True).unique(subset=self.key, keep="first")

    def values_sql(self, n: int, upsert: bool) -> str:
        """INSERT of n rows (every column, then row_hash) as bound parameters: for small
        writes, where registering Arrow frames costs more than the rows."""
        return (self._values_head + ", ".join(self._row_placeholders for _ in range(n))
                + (f" {self.on_conflict}" if upsert else ""))

    def stored_versions(self, con: duckdb.DuckDBPyConnection,
                        keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """The stored version of each of these keys that exists (point lookups)."""
        sql = self._stored_sql + " OR ".join(self._key_match for _ in keys)
        found = con.execute(sql, [v for key in keys for v in key]).fetchall()
        n = len(self.key)
        return {tuple(r[:n]): r[n] for r in found}

    def canonical_rows(self, frame: pl.DataFrame, json_canonical: bool = False) -> Iterator[dict[str, Any]]:
        """Each row's canonical form (see the module docstring), in frame order, keys in
        sorted order.

        `json_canonical`: the frame's JSON columns already hold canonical JSON text (as
        `frame()` writes it); it is embedded as is (`orjson.Fragment`), which gives the
        same bytes as parsing it and serialising it again, without doing either."""
        columns = self.sorted_columns
        view = frame.select(columns)
        if self.time_columns:
            view = view.with_columns(pl.col(c).dt.strftime(timestamps.POLARS_FORMAT) for c in self.time_columns)
        # Column by column into Python values, then zipped into rows: the same values as
        # iter_rows() at a fraction of its per-row cost.
        values = [view.get_column(c).to_list() for c in columns]
        parse = orjson.Fragment if json_canonical else orjson.loads
        for c in self.json_columns:
            i = columns.index(c)
            values[i] = [None if v is None else parse(v) for v in values[i]]
        late = self.late_columns
        for row in zip(*values):
            canonical = dict(zip(columns, row))
            for c in late:
                if canonical[c] is None:
                    del canonical[c]
            yield canonical

    def row_hashes(self, frame: pl.DataFrame, json_canonical: bool = False) -> list[str]:
        """SHA-256 of each row's canonical bytes: what the ledger and `row_hash` hold."""
        # In bulk (polars, column by column) from a few dozen rows up: below that its fixed
        # cost is more than the rows' (an access-log entry is one row).
        if frame.height < BULK_HASH_ROWS or not rowbytes.encoder_agrees():
            return self.row_hashes_by_row(frame, json_canonical)
        view = frame.select(self.sorted_columns)
        if self.time_columns:
            view = view.with_columns(pl.col(c).dt.strftime(timestamps.POLARS_FORMAT) for c in self.time_columns)
        if not json_canonical:
            canonical, loads = records.canonical_bytes, orjson.loads
            view = view.with_columns(
                pl.Series(c, [None if v is None else canonical(loads(v)).decode()
                              for v in view.get_column(c).to_list()], dtype=pl.Utf8)
                for c in self.json_columns)
        texts = rowbytes.row_texts(view, self.sorted_columns, self.json_columns, self.float_columns,
                                   self.late_columns)
        sha256 = hashlib.sha256
        return [sha256(b).hexdigest() for b in texts.cast(pl.Binary).to_list()]

    def row_hashes_by_row(self, frame: pl.DataFrame, json_canonical: bool = False) -> list[str]:
        """`row_hashes` one row at a time, straight from the definition (the reference the
        bulk encoding is checked against)."""
        sha256, dumps = hashlib.sha256, orjson.dumps
        # `records.canonical_bytes` sorts keys at every level. The rows' keys come sorted
        # already; with canonical JSON text embedded, nothing nested is left to sort (list
        # columns hold strings), so the same bytes need no sorting pass.
        option = 0 if json_canonical else orjson.OPT_SORT_KEYS
        return [sha256(dumps(row, option=option)).hexdigest()
                for row in self.canonical_rows(frame, json_canonical)]

    def keys(self, frame: pl.DataFrame) -> pl.Series:
        """The ledger key of each row (`records.key_of`: key values joined by '|')."""
        return frame.select(
            pl.concat_str([pl.col(k).cast(pl.Utf8) for k in self.key], separator="|")
            .alias("key")).to_series()


def load_tables(con: duckdb.DuckDBPyConnection) -> dict[str, Table]:
    """Every ledgered table present in the store, by table name."""
    kinds = {table: kind for kind, table in RECORD_TABLES.items()}
    found = {}
    for name in KEYS:
        cols = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position", [name]).fetchall()
        if cols:
            found[name] = Table(name, cols, kinds.get(name))
    return found


def ledger_items(table: Table, frame: pl.DataFrame, hashes: Iterable[str | None]) -> pl.DataFrame:
    """The ledger lines for rows of `table` written (hash) or deleted (None)."""
    return pl.DataFrame({
        "tbl": pl.Series([table.name] * frame.height, dtype=pl.Utf8),
        "key": table.keys(frame),
        "version": frame["version"].cast(pl.Int32),
        "row_hash": pl.Series(list(hashes), dtype=pl.Utf8),
    })
