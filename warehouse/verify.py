"""Verification: recompute everything the ledger and the digests assert.

1. rows:    every row's canonical bytes hash to its `row_hash` column;
2. binding: every row's hash is the one its key's latest ledger line holds, every key the
            ledger says is live exists, and no row exists the ledger never wrote;
3. chain:   entries are numbered 1..n without gaps, each names the previous entry's hash,
            and each entry's hash and rows digest recompute from its lines;
4. digests: each digest file's signature checks with the public key, each names the
            previous file with its SHA-256, each checkpoint the store recorded has its file,
            and each digest's chain head is the ledger entry at that position (a truncated
            or rewritten chain cannot match a digest signed before);
5-8. published, rollback, numbering, freshness: the store against the digests published
            outside it, and the age of the newest digest (warehouse.rollback).

Works on any connection, including a read-only one opened while the warehouse is stopped.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterator

import duckdb
import orjson
import polars as pl

from warehouse import digests, rollback
from warehouse.ledger import GENESIS, entry_hash, rows_digest
from warehouse.published import Published
from warehouse.tables import Table, iso, load_tables

MAX_PROBLEMS = 50
BATCH = 50_000


class Report:
    def __init__(self) -> None:
        self.problems: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.rows: dict[str, int] = {}
        self.entries = 0
        self.head: dict[str, Any] = {"seq": 0, "hash": GENESIS}
        self.digests = 0
        self.latest_digest: str | None = None
        self.public_key: str | None = None

    def problem(self, check: str, where: str, message: str, first: bool = False) -> bool:
        """Record a problem (`first`: the one to name before all others); False once
        enough are recorded to stop looking."""
        if len(self.problems) < MAX_PROBLEMS or first:
            self.problems.insert(0 if first else len(self.problems),
                                 {"check": check, "where": where, "message": message})
            del self.problems[MAX_PROBLEMS:]
        return len(self.problems) < MAX_PROBLEMS

    def as_dict(self) -> dict[str, Any]:
        first = self.problems[0] if self.problems else None
        return {"ok": not self.problems,
                "first_problem": f"{first['where']}: {first['message']}" if first else None,
                "problems": self.problems, "warnings": self.warnings,
                "ledger": {"entries": self.entries, **self.head},
                "rows_checked": self.rows,
                "digests": {"checked": self.digests, "latest": self.latest_digest,
                            "public_key_sha256": self.public_key}}


def verify(con: duckdb.DuckDBPyConnection, data_dir: Path, public_key: Path | None = None,
           files: list[tuple[str, bytes]] | None = None, published: Published | None = None,
           freshness: rollback.Freshness | None = None) -> dict[str, Any]:
    """Check everything; `files` are the digest files (read now when not given). Give a
    connection whose view does not move while this runs (`Store.snapshot`, or a store
    no one else has open), and the files read at the same point; `published`, the
    digests found outside the data directory, read no later than that point."""
    report = Report()
    if files is None:
        files = digests.load_all(digests.digests_dir(data_dir))
    tables = load_tables(con)
    if "ledger" not in {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}:
        report.problem("chain", "ledger", "this store has no ledger (written before it existed?)")
        return report.as_dict()
    for table in tables.values():
        _check_rows(con, table, report)
        _check_binding(con, table, report)
        _check_unique(con, table, report)
    _check_chain(con, report)
    _check_digests(con, Path(data_dir), public_key, files, report, published or Published(),
                   freshness)
    return report.as_dict()


def _describe(table: Table, key: str) -> str:
    return f"{table.name} {'+'.join(table.key)}={key}"


# The times the warehouse writes (ISO text through Python): a stored time outside them
# (DuckDB's own limits, infinity) was not written by it, and cannot be formatted to hash.
_WRITABLE_TIMES = (dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999))


def _hashable_times(frame: pl.DataFrame, table: Table) -> pl.DataFrame:
    """`frame` with times the warehouse cannot have written made null: the row then fails
    its hash check (and is reported) instead of the check failing on it."""
    low, high = _WRITABLE_TIMES
    return frame.with_columns(pl.when(pl.col(c).is_between(low, high)).then(pl.col(c)).otherwise(None).alias(c)
                              for c in table.time_columns if c in frame.columns)


def _check_rows(con: duckdb.DuckDBPyConnection, table: Table, report: Report) -> None:
    count = 0
    reader = con.sql(f"SELECT * FROM {table.name}").to_arrow_reader(BATCH)
    try:
        for batch in reader:
            frame = _hashable_times(pl.from_arrow(batch), table)
            count += frame.height
            keys = table.keys(frame).to_list()
            for key, stored, computed in zip(keys, frame["row_hash"].to_list(), table.row_hashes(frame)):
                if stored is None:
                    message = "row has no hash: it was inserted outside the warehouse"
                elif stored != computed:
                    message = ("row content does not match its hash: a field was changed after "
                               f"it was written (stored {stored[:12]}…, content hashes to "
                               f"{computed[:12]}…)")
                else:
                    continue
                if not report.problem("row", _describe(table, key), message):
                    return
    finally:
        reader.close()
    report.rows[table.name] = count


def _check_binding(con: duckdb.DuckDBPyConnection, table: Table, report: Report) -> None:
    # Table names and key expressions come from code; the table name is also bound.
    found = con.execute(f"""
        WITH latest AS (
            SELECT key, version, row_hash, seq FROM ledger_rows WHERE tbl = ?
            QUALIFY row_number() OVER (PARTITION BY key ORDER BY seq DESC, pos DESC) = 1),
        cur AS (SELECT {table.key_sql} AS key, t.version, t.row_hash FROM {table.name} t)
        SELECT coalesce(c.key, l.key) AS key, c.row_hash, l.row_hash, l.seq, c.key IS NULL,
               l.key IS NULL
        FROM cur c FULL OUTER JOIN latest l ON c.key = l.key
        WHERE (c.key IS NULL AND l.row_hash IS NOT NULL) OR l.key IS NULL
           OR (c.key IS NOT NULL AND c.row_hash IS DISTINCT FROM l.row_hash)
        ORDER BY l.seq NULLS FIRST, 1 LIMIT ?""", [table.name, MAX_PROBLEMS]).fetchall()
    for key, row_hash, ledger_hash, seq, missing, unknown in found:
        where = _describe(table, key)
        if missing:
            message = f"row is missing: ledger entry {seq} wrote it and no purge removed it"
        elif unknown:
            message = "row is not in the ledger: it was inserted outside the warehouse"
        elif ledger_hash is None:
            message = f"row exists but ledger entry {seq} deleted it"
        else:
            message = (f"row hash {str(row_hash)[:12]}… is not the one ledger entry {seq} "
                       f"recorded ({ledger_hash[:12]}…)")
        if not report.problem("binding", where, message):
            return


def _check_unique(con: duckdb.DuckDBPyConnection, table: Table, report: Report) -> None:
    """No key stored twice: the large tables have no primary key in DuckDB (the warehouse
    keeps one row per key itself), so this is where a second row would show."""
    found = con.execute(f"SELECT {table.key_sql} AS key, count(*) FROM {table.name} t "
                        "GROUP BY ALL HAVING count(*) > 1 ORDER BY 1 LIMIT ?", [MAX_PROBLEMS]).fetchall()
    for key, count in found:
        if not report.problem("unique", _describe(table, key), f"key is stored {count} times, not once"):
            return


def _lines(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[int, tuple]]:
    reader = con.sql("SELECT seq, tbl, key, version, row_hash FROM ledger_rows "
                     "ORDER BY seq, pos").to_arrow_reader(BATCH)
    try:
        for batch in reader:
            for seq, *line in pl.from_arrow(batch).iter_rows():
                yield seq, tuple(line)
    finally:
        reader.close()


def _check_chain(con: duckdb.DuckDBPyConnection, report: Report) -> None:
    # Entries are few (one per commit) and held in memory; the lines, one per row written,
    # are streamed. Both come from the same connection, so from the same snapshot.
    entries = con.execute("SELECT seq, prev_hash, entry_hash, committed_at, kind, detail, "
                          "row_count, rows_sha256 FROM ledger ORDER BY seq").fetchall()
    lines = _lines(con)
    try:
        _walk(entries, lines, report)
    finally:
        lines.close()  # releases the streaming result: the connection has more work to do


def _walk(entries: list[tuple], lines: Iterator[tuple[int, tuple]], report: Report) -> None:
    pending = next(lines, None)
    prev_hash, expected = GENESIS, 1
    for seq, prev, stored, at, kind, detail, count, stored_rows in entries:
        where = f"ledger entry {seq}"
        if seq != expected:
            report.problem("chain", where, f"expected entry {expected} here: entries "
                           f"{expected}..{seq - 1} were removed")
            return
        own: list[tuple] = []
        while pending is not None and pending[0] < seq:
            report.problem("chain", f"ledger line of entry {pending[0]}", "line belongs to no entry")
            pending = next(lines, None)
        while pending is not None and pending[0] == seq:
            own.append(pending[1])
            pending = next(lines, None)
        digest = rows_digest(own)
        detail_value = orjson.loads(detail) if detail is not None else None
        recomputed = entry_hash(seq, prev, iso(at), kind, detail_value, count, digest)
        if prev != prev_hash:
            report.problem("chain", where, "does not name the previous entry's hash: the "
                           "chain was cut or rewritten here")
            return
        if len(own) != count or digest != stored_rows:
            report.problem("chain", where, f"its {len(own)} ledger lines do not hash to the "
                           f"rows digest it recorded ({count} lines): lines were changed")
            return
        if recomputed != stored:
            report.problem("chain", where, "entry hash does not recompute: the entry was changed")
            return
        prev_hash, expected = stored, seq + 1
        report.entries += 1
        report.head = {"seq": seq, "hash": stored}
    if pending is not None:
        report.problem("chain", f"ledger line of entry {pending[0]}", "line belongs to no entry")


def _live_counts(con: duckdb.DuckDBPyConnection, seq: int) -> dict[str, int]:
    return dict(con.execute("""
        SELECT tbl, count(*) FROM (
            SELECT tbl, row_hash FROM ledger_rows WHERE seq <= ?
            QUALIFY row_number() OVER (PARTITION BY tbl, key ORDER BY seq DESC, pos DESC) = 1)
        WHERE row_hash IS NOT NULL GROUP BY tbl""", [seq]).fetchall())


def _check_digests(con: duckdb.DuckDBPyConnection, data_dir: Path, public_key: Path | None,
                   loaded: list[tuple[str, bytes]], report: Report, published: Published,
                   freshness: rollback.Freshness | None) -> None:
    recorded = con.execute("SELECT digest_seq, file, file_sha256, chain_seq, chain_head "
                           "FROM checkpoints ORDER BY digest_seq").fetchall()
    files: dict[int, tuple[str, bytes, dict]] = {}
    for rel, data in loaded:
        doc = digests.parse(data)
        if doc is None or not isinstance(doc.get("digest_seq"), int):
            report.problem("digest", rel, "not a nimtrail digest (unreadable or altered)")
            continue
        files[doc["digest_seq"]] = (rel, data, doc)
    if not recorded and not files and not any(s.files for s in published.sources):
        report.warnings.extend(published.notes)
        report.warnings.append("no digests yet: nothing signed to check the chain against")
        return
    key_path = public_key or digests.keys_dir(data_dir) / digests.PUBLIC_KEY
    try:
        key = digests.load_public_key(key_path)
    except (OSError, ValueError) as e:
        report.problem("digest", str(key_path.name), f"cannot load the public key: {e}")
        return
    by_file = {rel: (seq, data) for seq, (rel, data, _doc) in files.items()}
    for digest_seq, rel, sha, _chain_seq, _head in recorded:
        if rel not in by_file:
            report.problem("digest", rel, f"digest {digest_seq} is missing: the store recorded "
                           "it, the file is gone")
        elif digests.sha256(by_file[rel][1]) != sha:
            report.problem("digest", rel, f"digest {digest_seq} was altered: its SHA-256 is not "
                           "the one the store recorded")
    # an idle digest of an empty store signs entry 0, the genesis hash
    heads = {0: GENESIS, **dict(con.execute("SELECT seq, entry_hash FROM ledger").fetchall())}
    last_seq = max(heads)
    recorded_files = {r[1] for r in recorded}
    fp = report.public_key = digests.fingerprint(key)
    for digest_seq in sorted(files):
        rel, _data, doc = files[digest_seq]
        report.digests += 1
        report.latest_digest = rel
        if doc.get("public_key_sha256") != fp or not digests.signature_ok(doc, key):
            report.problem("digest", rel, "signature does not verify with the public key")
            continue
        previous = doc.get("previous")
        if digest_seq > 1:
            before = files.get(digest_seq - 1)
            if not previous:
                report.problem("digest", rel, "names no previous digest")
            elif before is None:
                report.problem("digest", previous.get("file", "?"),
                               f"digest {digest_seq - 1} is missing: {rel} names it as previous")
            elif previous.get("file") != before[0] or previous.get("sha256") != digests.sha256(before[1]):
                report.problem("digest", before[0], f"digest {digest_seq - 1} is not the file "
                               f"{rel} names as previous (replaced or altered)")
        chain = doc.get("chain") or {}
        seq, head = chain.get("seq"), chain.get("head")
        if seq not in heads:
            report.problem("digest", rel, f"signs chain entry {seq}, but the ledger ends at "
                           f"entry {last_seq}: the chain was truncated")
        elif heads[seq] != head:
            report.problem("digest", rel, f"signs chain entry {seq} with a different hash than "
                           "the ledger holds: the chain was rewritten")
        if rel not in recorded_files and not doc.get("idle"):
            report.warnings.append(f"{rel} is signed but not recorded in the store")
    if files:
        latest = files[max(files)][2]
        seq = (latest.get("chain") or {}).get("seq")
        if seq in heads:
            counts, signed = _live_counts(con, seq), latest.get("counts") or {}
            for name, n in signed.items():
                if counts.get(name, 0) != n:
                    report.problem("digest", files[max(files)][0], f"signed {n} {name} rows at entry "
                                   f"{seq}; the ledger accounts for {counts.get(name, 0)}")
    rollback.check(report, key, files, max((r[0] for r in recorded), default=0), heads,
                   published, freshness)
