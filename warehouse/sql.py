"""Small helpers over DuckDB connections.

DuckDB 2.0 refuses new work on a connection whose last result was not read to the end, so
single-row reads go through `one()`, which always drains the result.
"""

from __future__ import annotations

from typing import Any, Sequence

import duckdb


def one(con: duckdb.DuckDBPyConnection, sql: str, args: Sequence[Any] | None = None) -> tuple | None:
    rows = con.execute(sql, args or []).fetchall()
    return rows[0] if rows else None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, args: Sequence[Any] | None = None) -> Any:
    row = one(con, sql, args)
    return row[0] if row else None
