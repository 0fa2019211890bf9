"""The retention report: what is held per data class, what was purged, which holds are in
force, and who read what, for a period; exported as JSON, CSV or Parquet.

CSV and Parquet carry one flat table (`section` says which part a row belongs to); JSON
carries the same content as a document. Every export is recorded (SHA-256 of its bytes,
who asked, for which period) in the `exports` table, which the ledger covers; `lookup`
answers whether a file (by its SHA-256) or an export id was produced here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from typing import Any

import duckdb
import orjson
import polars as pl

from nimtrail.config import RetentionConfig
from warehouse import holds
from warehouse.access import Principal
from warehouse.ledger import now, read_head
from warehouse.params import BadParameter, Params
from warehouse.queries.common import rows
from warehouse.retention import CONTENT_COLUMNS, policies
from warehouse.store import Store
from warehouse.tables import AGE_COLUMNS, iso

FORMATS = {"json": "application/json", "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
CLASSES = (("metadata", "model_calls"), ("metadata", "tool_actions"), ("metadata", "findings"),
           ("metadata", "trace_spans"), ("metadata", "deployments"), ("content", "model_calls"), ("content", "tool_actions"),
           ("samples", "metric_samples"), ("access_log", "access_log"))
FLAT_COLUMNS = {"section": pl.Utf8, "data_class": pl.Utf8, "table_name": pl.Utf8,
                "keep_days": pl.Float64, "action": pl.Utf8, "rows": pl.Int64, "held_rows": pl.Int64,
                "oldest": pl.Utf8, "newest": pl.Utf8, "at": pl.Utf8, "principal": pl.Utf8,
                "operation": pl.Utf8, "id": pl.Utf8, "detail": pl.Utf8}


def period(params: Params) -> tuple[dt.datetime, dt.datetime]:
    start, end = params.time("from"), params.time("to")
    if start is None:
        raise BadParameter("from", "required (ISO-8601 time)")
    if end is None:
        raise BadParameter("to", "required (ISO-8601 time)")
    if end <= start:
        raise BadParameter("to", "must be after from")
    return start, end


def build(con: duckdb.DuckDBPyConnection, config: RetentionConfig, start: dt.datetime,
          end: dt.datetime, sharded: bool = False) -> dict[str, Any]:
    keep = policies(config)
    held = []
    for data_class, table in CLASSES:
        age = AGE_COLUMNS[table]
        where = "TRUE"
        if data_class == "content":
            where = " OR ".join(f"t.{c} IS NOT NULL" for c in CONTENT_COLUMNS[table])
        n, oldest, newest, under_hold = con.execute(
            f"SELECT count(*), min({age}), max({age}), count(*) FILTER (WHERE {holds.held_sql(table, sharded)}) "
            f"FROM {table} t WHERE {where}").fetchall()[0]
        held.append({"data_class": data_class, "table_name": table, "keep_days": keep[data_class],
                     "rows": n, "held_rows": under_hold, "oldest": iso(oldest), "newest": iso(newest)})
    purges = rows(con, "SELECT * FROM retention_purges WHERE purged_at >= ? AND purged_at < ? "
                       "ORDER BY purged_at, purge_id", [start, end])
    access = rows(con, """
        SELECT principal, role, person, operation, count(*) AS requests, sum(coalesce(rows, 0)) AS rows,
               count(*) FILTER (WHERE status >= 400) AS refused,
               min(accessed_at) AS first_at, max(accessed_at) AS last_at
        FROM access_log WHERE accessed_at >= ? AND accessed_at < ?
        GROUP BY ALL ORDER BY principal NULLS FIRST, person NULLS FIRST, operation""", [start, end])
    head = read_head(con)
    digest = con.execute("SELECT digest_seq, file, file_sha256, chain_seq FROM checkpoints "
                         "ORDER BY digest_seq DESC LIMIT 1").fetchall()
    return {"report": "retention", "from": iso(start), "to": iso(end), "generated_at": iso(now()),
            "policies_days": keep, "held": held, "purges": purges,
            "holds_in_force": holds.in_force(con, start, end), "access": access,
            "ledger": {"seq": head.seq, "head": head.hash},
            "latest_digest": dict(zip(("digest_seq", "file", "file_sha256", "chain_seq"), digest[0]))
            if digest else None}


def flat(doc: dict[str, Any]) -> pl.DataFrame:
    out: list[dict[str, Any]] = []
    for h in doc["held"]:
        out.append({"section": "held", **h})
    for p in doc["purges"]:
        out.append({"section": "purge", "data_class": p["policy"], "table_name": p["tbl"],
                    "keep_days": p["keep_days"], "action": p["action"], "rows": p["rows"],
                    "held_rows": p["held_rows"], "at": p["purged_at"], "principal": p["principal"],
                    "id": p["purge_id"], "detail": orjson.dumps({"cutoff": p["cutoff"],
                                                                 "run_id": p["run_id"]}).decode()})
    for h in doc["holds_in_force"]:
        criteria = {k: h[k] for k in ("deployment_id", "caller", "time_from", "time_to") if h[k]}
        out.append({"section": "hold", "at": h["created_at"], "principal": h["created_by"],
                    "id": h["hold_id"], "detail": orjson.dumps(
                        {"reason": h["reason"], "criteria": criteria,
                         "released_at": h["released_at"]}).decode()})
    for a in doc["access"]:
        out.append({"section": "access", "principal": a["principal"], "operation": a["operation"],
                    "rows": a["rows"], "oldest": a["first_at"], "newest": a["last_at"],
                    "detail": orjson.dumps({"role": a["role"], "person": a["person"],
                                            "requests": a["requests"],
                                            "refused": a["refused"]}).decode()})
    out.append({"section": "ledger", "id": str(doc["ledger"]["seq"]), "at": doc["generated_at"],
                "detail": orjson.dumps({"head": doc["ledger"]["head"], "from": doc["from"],
                                        "to": doc["to"], "latest_digest": doc["latest_digest"]}).decode()})
    return pl.DataFrame([{c: r.get(c) for c in FLAT_COLUMNS} for r in out], schema=FLAT_COLUMNS)


def encode(doc: dict[str, Any], fmt: str) -> tuple[bytes, int]:
    """The export's bytes and how many rows it holds."""
    frame = flat(doc)
    if fmt == "json":
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n", frame.height
    buffer = io.BytesIO()
    if fmt == "csv":
        frame.write_csv(buffer)
    else:
        frame.write_parquet(buffer, statistics=False)
    return buffer.getvalue(), frame.height


def record_export(store: Store, principal: Principal, kind: str, fmt: str, params: dict[str, Any],
                  data: bytes, rows_count: int) -> dict[str, Any]:
    """Ledger the export: anyone holding the file can check its SHA-256 against the store."""
    export = {"export_id": f"exp-{uuid.uuid4().hex[:12]}", "exported_at": iso(now()),
              "principal": principal.name, "person": principal.person, "kind": kind, "format": fmt,
              "params": params,
              "rows": rows_count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "version": 1}
    with store.transaction() as con:
        items = store.record(con, "exports", [export])
        store.ledger.append(con, "export", {"export_id": export["export_id"], "kind": kind}, items)
    return export


def lookup(con: duckdb.DuckDBPyConnection, params: Params) -> dict[str, Any]:
    """The exports recorded under `id`: an export id, or the SHA-256 of a file (hex). One
    file can have been handed out more than once (the same day archived twice); each time
    is a row, oldest first."""
    ident = params.text("id")
    if ident is None:
        raise BadParameter("id", "required: an export id (exp-...) or a file's SHA-256")
    found = rows(con, "SELECT * FROM exports WHERE export_id = ? OR sha256 = ? "
                      "ORDER BY exported_at, export_id", [ident, ident.lower()])
    return {"id": ident, "found": bool(found), "rows": found}
