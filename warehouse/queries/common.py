"""What every named query shares: rows as JSON-ready dicts, time ranges, pages."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import duckdb
import orjson

from nimtrail import timestamps
from warehouse.params import BadParameter, Params
from warehouse.tables import observed_within_any, windows_of

JSON_COLUMNS = {"labels", "buckets", "detail", "lora", "container_config", "env", "api_surface",
                "health_endpoints", "logging_mode", "tracing_config", "tool_calling",
                "deploy_path", "identities", "field_sources", "params"}


def _json_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _time_text(value: Any) -> Any:
    # (a timestamp beyond what Python's datetime holds comes back as DuckDB's text)
    return timestamps.iso(value) if isinstance(value, dt.datetime) else value


def _value(name: str, value: Any) -> Any:
    value = _time_text(value)
    return _json_text(value) if name in JSON_COLUMNS else value


# The SQL types whose values come back as datetimes, which become nimtrail's time text.
_TIME_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"})


def rows(con: duckdb.DuckDBPyConnection, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    """The result as JSON-ready dicts (what `_value` gives each value). Which columns need
    converting is decided once from the result's types, not for every value: a page of
    1,000 calls has ~45,000 values, most of them passed through as they are."""
    cursor = con.execute(sql, args)
    names = [d[0] for d in cursor.description]
    types = [str(d[1]) for d in cursor.description]
    convert = [(n, _time_text if t in _TIME_TYPES else _json_text)
               for n, t in zip(names, types) if t in _TIME_TYPES or n in JSON_COLUMNS]
    drop = "row_hash" in names
    out = []
    for row in cursor.fetchall():
        record = dict(zip(names, row))
        if drop:
            del record["row_hash"]
        for name, to_text in convert:
            value = record[name]
            if value is not None:
                record[name] = to_text(value)
        out.append(record)
    return out


# Where the rows of a table whose column holds any of some values were written: (table,
# column, values) -> windows of observed_at seconds, [] for none, None for unknown
# (Store.written_where). Readers without a store pass none.
Locate = Callable[[str, str, list[Any]], "list[tuple[int, int]] | None"]


def located(con: duckdb.DuckDBPyConnection, table: str, condition: str, arg: Any, column: str,
            values: list[Any], locate: Locate | None = None, order_by: str = "",
            columns: str = "*") -> list[dict[str, Any]]:
    """`columns` of the rows of `table` that `condition` (SQL over `t` with one parameter,
    `arg`) selects, where `condition` holds only for rows whose `column` holds one of
    `values`. The large tables have no index in DuckDB: where the warehouse's indexes know
    when such rows were written, only those row groups are read, none when no row holds any
    of the values, and everything when the windows find nothing (the key index may be a
    commit behind)."""
    sql = f"SELECT {columns} FROM {table} t WHERE {condition}"
    windows = locate(table, column, values) if locate else None
    if windows is not None:
        if not windows:
            return []
        within, params = observed_within_any(windows)
        found = rows(con, f"{sql} AND {within} {order_by}", [arg, *params])
        if found:
            return found
    return rows(con, f"{sql} {order_by}", [arg])


def by_key(con: duckdb.DuckDBPyConnection, table: str, column: str, value: Any,
           locate: Locate | None = None) -> list[dict[str, Any]]:
    """The row of `table` whose one-column key `column` is `value` (see `located`)."""
    return located(con, table, f't."{column}" = ?', value, column, [value], locate)


def time_range(params: Params, column: str, where: list[str], args: list[Any],
               since: str = "since", until: str = "until") -> tuple[dt.datetime | None, dt.datetime | None]:
    """Add `column >= since AND column < until` for the parameters given; checks order."""
    start, end = params.time(since), params.time(until)
    if start and end and end <= start:
        raise BadParameter(until, f"must be after {since}")
    if start:
        where.append(f"{column} >= ?")
        args.append(start)
    if end:
        where.append(f"{column} < ?")
        args.append(end)
    return start, end


def equals(params: Params, filters: dict[str, str], where: list[str], args: list[Any]) -> None:
    for name, clause in filters.items():
        value = params.text(name)
        if value is not None:
            where.append(clause)
            args.append(value)


def page(params: Params, default: int = 100) -> tuple[int, int]:
    return params.integer("limit", default, 1, 1000), params.integer("offset", 0, 0, 10_000_000)


def paged(con: duckdb.DuckDBPyConnection, sql: str, args: list[Any], limit: int,
          offset: int) -> dict[str, Any]:
    """Run `sql` (without LIMIT) one page at a time; next_offset is null on the last page."""
    found = rows(con, f"{sql} LIMIT ? OFFSET ?", args + [limit + 1, offset])
    more = len(found) > limit
    return {"rows": found[:limit], "next_offset": offset + limit if more else None}


def page_of(ordered: list[dict[str, Any]], limit: int, offset: int, more: bool = False) -> dict[str, Any]:
    """`paged`'s answer from rows already in order (merged from several stores: `more`,
    whether one of them holds rows past those it gave)."""
    more = more or len(ordered) > offset + limit
    return {"rows": ordered[offset:offset + limit], "next_offset": offset + limit if more else None}


def where_sql(where: list[str]) -> str:
    return ("WHERE " + " AND ".join(where)) if where else ""


PAGE_PARAMS = {"limit", "offset"}
