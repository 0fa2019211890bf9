"""Numbered, additive migrations, each recorded with its SHA-256, applied in one
transaction when the warehouse starts."""

from __future__ import annotations

import hashlib
from importlib import resources

import duckdb

from nimtrail.errors import NimtrailError


class MigrationError(NimtrailError):
    """The store's recorded migrations disagree with the code's."""


def _migrations() -> list[tuple[int, str, str]]:
    files = sorted(p for p in resources.files("warehouse.migrations").iterdir()
                   if p.name.endswith(".sql"))
    return [(int(p.name.split("_", 1)[0]), p.name, p.read_text()) for p in files]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied.

    A recorded migration whose text changed since it ran is an error: migrations are
    append-only, a change must be a new file.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                           id INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
                           sha256 VARCHAR NOT NULL, applied_at TIMESTAMP DEFAULT now())""")
        done = {row[0]: row[1:] for row in con.execute(
            "SELECT id, name, sha256 FROM schema_migrations").fetchall()}
        applied = []
        for number, name, sql in _migrations():
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if number in done:
                if done[number][1] != digest:
                    raise MigrationError(f"migration {name} changed after it was applied; "
                                         "add a new migration instead")
                continue
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (id, name, sha256) VALUES (?, ?, ?)",
                        [number, name, digest])
            applied.append(name)
        con.execute("COMMIT")
        return applied
    except Exception:
        con.execute("ROLLBACK")
        raise
