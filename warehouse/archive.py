"""Day partitions as Parquet: immutable copies that DuckDB, Spark or Trino read in place.

`nimtrail archive --day D --out DIR` writes `DIR/<table>/day=D/part-0.parquet` for each
table with rows that day (by the table's age column), plus `DIR/manifest-D.json` naming
each file's rows, SHA-256 and export id. A partition that exists is never
overwritten with different bytes. Each partition handed out is recorded in `exports`.
"""

from __future__ import annotations

import datetime as dt
import io
import duckdb

from warehouse.params import BadParameter, Params
from warehouse.tables import AGE_COLUMNS

TABLES = tuple(AGE_COLUMNS)


def day_of(params: Params) -> dt.datetime:
    text = params.text("day")
    if text is None:
        raise BadParameter("day", "required (YYYY-MM-DD)")
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d")
    except ValueError as e:
        raise BadParameter("day", f"expected YYYY-MM-DD, got {text!r}") from e
    if day.date() >= dt.datetime.now(dt.timezone.utc).date():
        # a day still being written would not stay the same: partitions are immutable
        raise BadParameter("day", "must be a finished day (before today, UTC)")
    return day


def table_of(params: Params) -> str:
    table = params.choice("table", TABLES)
    if table is None:
        raise BadParameter("table", f"required: one of {', '.join(TABLES)}")
    return table


def partition(con: duckdb.DuckDBPyConnection, table: str, day: dt.datetime) -> tuple[bytes, int]:
    """One table's rows of one day as Parquet bytes (row_hash included: each archived row
    can be checked against the ledger)."""
    age = AGE_COLUMNS[table]
    # Table names come from TABLES (code), never from input; the day is bound.
    frame = con.sql(f"SELECT * FROM {table} t WHERE {age} >= ? AND {age} < ? ORDER BY ALL",
                    params=[day, day + dt.timedelta(days=1)]).pl()
    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=True)
    return buffer.getvalue(), frame.height
