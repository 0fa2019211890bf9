"""The ledger on a real DuckDB file: superseded versions still verify, and each kind of
tampering is caught and named."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest

from tests.harness import REPO
from nimtrail import columnar, records
from tests.warehouse_data import action, ago, call, checkpointer, deployment, write
from warehouse import digests, schema
from warehouse.store import Store
from warehouse.verify import verify


def _verify(path: Path, data_dir: Path) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return verify(con, data_dir)
    finally:
        con.close()


@pytest.fixture(scope="module")
def sealed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped store with calls (one superseded by a later version), actions, a
    deployment, and three signed digests."""
    data = tmp_path_factory.mktemp("sealed") / "data"
    store = Store(data / "audit.duckdb")
    cp = checkpointer(store, data)
    write(store, "deployment", [deployment()])
    write(store, "model_call", [call(f"c{i}") for i in range(5)])
    cp.checkpoint()
    write(store, "model_call", [call("c0", version=2, caller="bob")])  # a late join
    write(store, "tool_action", [action("a0", "c0"), action("a1", "c1")])
    cp.checkpoint()
    write(store, "model_call", [call("c0", version=1, caller="replayed")])  # older: no-op
    write(store, "finding", [])
    write(store, "tool_action", [action("a2", "c2")])
    cp.checkpoint()
    store.close()
    return data


@pytest.fixture
def sealed(sealed_template: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the sealed store: (db file, data dir)."""
    data = tmp_path / "data"
    shutil.copytree(sealed_template, data)
    return data / "audit.duckdb", data


def test_untouched_store_verifies_with_superseded_versions(sealed):
    path, data = sealed
    result = _verify(path, data)
    assert result["ok"], result["problems"]
    assert result["digests"]["checked"] == 3
    assert result["rows_checked"]["model_calls"] == 5
    con = duckdb.connect(str(path), read_only=True)
    # the replayed older version neither changed the row nor entered the ledger
    assert con.execute("SELECT caller, version FROM model_calls WHERE call_id = 'c0'").fetchall() == [("bob", 2)]
    lines = con.execute("SELECT version FROM ledger_rows WHERE key = 'c0' ORDER BY seq").fetchall()
    assert lines == [(1,), (2,)]
    con.close()


def _sql(statement: str):
    def tamper(path: Path, _data: Path) -> None:
        con = duckdb.connect(str(path))
        con.execute(statement)
        con.close()
    return tamper


def _delete_digest(number: int):
    def tamper(_path: Path, data: Path) -> None:
        files = digests.list_files(data / "digests")
        files[number - 1].unlink()
    return tamper


def _edit_digest(_path: Path, data: Path) -> None:
    target = digests.list_files(data / "digests")[1]
    target.write_bytes(target.read_bytes().replace(b'"model_calls": 5', b'"model_calls": 4'))


TAMPERING = {
    "changed field": (_sql("UPDATE model_calls SET caller = 'mallory' WHERE call_id = 'c3'"),
                      "model_calls call_id=c3", "a field was changed"),
    "changed field and its hash": (
        _sql("UPDATE model_calls SET caller = 'mallory' WHERE call_id = 'c3'; "
             "UPDATE model_calls SET row_hash = 'f' || substr(row_hash, 2) WHERE call_id = 'c3'"),
        "model_calls call_id=c3", "does not match its hash"),
    "deleted row": (_sql("DELETE FROM tool_actions WHERE action_id = 'a1'"),
                    "tool_actions action_id=a1", "row is missing"),
    "inserted row": (_sql("INSERT INTO findings (finding_id, kind, version) VALUES ('f9', 'x', 1)"),
                     "findings finding_id=f9", "inserted outside the warehouse"),
    "rewritten ledger line": (_sql("UPDATE ledger_rows SET version = 7 WHERE key = 'c4'"),
                              "ledger entry 2", "lines were changed"),
    "truncated chain": (_sql("DELETE FROM ledger_rows WHERE seq >= (SELECT max(seq) - 1 FROM ledger); "
                             "DELETE FROM ledger WHERE seq >= (SELECT max(seq) - 1 FROM ledger)"),
                        "nimtrail-digest-000000003", "the chain was truncated"),
    "deleted first digest": (_delete_digest(1), "nimtrail-digest-000000001", "digest 1 is missing"),
    "deleted last digest": (_delete_digest(3), "nimtrail-digest-000000003", "digest 3 is missing"),
    "edited digest": (_edit_digest, "nimtrail-digest-000000002", "signature does not verify"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_what_was_tampered_with(sealed, case):
    path, data = sealed
    tamper, where, message = TAMPERING[case]
    tamper(path, data)
    result = _verify(path, data)
    assert not result["ok"]
    named = [p for p in result["problems"] if where in p["where"] and message in p["message"]]
    assert named, result["problems"]


def test_digest_signed_by_another_key_is_rejected(sealed, tmp_path):
    path, data = sealed
    other = tmp_path / "other-keys"
    digests.load_or_create_key(other)
    con = duckdb.connect(str(path), read_only=True)
    result = verify(con, data, public_key=other / digests.PUBLIC_KEY)
    con.close()
    assert not result["ok"]
    assert "signature does not verify" in result["first_problem"]


def test_crash_after_digest_file_leaves_a_store_that_verifies(tmp_path):
    data = tmp_path / "data"
    script = ("import sys; from pathlib import Path; from tests.warehouse_data import *;"
              "s = Store(Path(sys.argv[1]) / 'audit.duckdb'); cp = checkpointer(s, Path(sys.argv[1]));"
              "write(s, 'model_call', [call('c1')]); cp.checkpoint();"
              "write(s, 'model_call', [call('c2')]); cp.checkpoint()")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NIMTRAIL_FAULTS": "warehouse.after_digest_file:2"}
    done = subprocess.run([sys.executable, "-c", script, str(data)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr
    assert len(digests.list_files(data / "digests")) == 2  # the second was never recorded

    store = Store(data / "audit.duckdb")
    cp = checkpointer(store, data)  # sets the unrecorded file aside
    assert len(list((data / "digests").rglob("*.unrecorded"))) == 1
    write(store, "model_call", [call("c3")])
    doc = cp.checkpoint()
    assert doc["digest_seq"] == 2
    store.close()
    result = _verify(data / "audit.duckdb", data)
    assert result["ok"], result["problems"]
    assert result["digests"]["checked"] == 2


def test_rows_written_before_the_ledger_existed_are_adopted(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    (first, name, sql), *_ = schema._migrations()
    con.execute("CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                "sha256 VARCHAR NOT NULL, applied_at TIMESTAMP DEFAULT now())")
    con.execute(sql)
    con.execute("INSERT INTO schema_migrations (id, name, sha256) VALUES (?, ?, ?)",
                [first, name, hashlib.sha256(sql.encode()).hexdigest()])
    con.execute("INSERT INTO model_calls (call_id, caller, version) VALUES ('old-1', 'carol', 1)")
    con.close()

    store = Store(path)
    assert store.ledger.head.seq == 1 and store.ledger.head.kind == "genesis"
    write(store, "model_call", [call("new-1")])
    store.close()
    result = _verify(path, tmp_path)
    assert result["ok"], result["problems"]
    assert result["rows_checked"]["model_calls"] == 2


def test_a_copied_data_directory_verifies_elsewhere(sealed, tmp_path):
    """A reviewer copies the data directory (file, digests, public key) and verifies it."""
    path, data = sealed
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    result = _verify(copy / path.name, copy)
    assert result["ok"], result["problems"]


def test_online_verification_sees_one_consistent_moment_while_writes_go_on(tmp_path):
    """The API verifies a running store: ingest and checkpoints continue meanwhile, and
    the answer must describe one moment, never a mix that looks like tampering."""
    import threading

    from nimtrail import config as config_mod
    from warehouse.access import Principal
    from warehouse.operations import Context, execute

    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    cp = checkpointer(store, data)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            write(store, "model_call", [call(f"w{i}-{j}") for j in range(50)])
            write(store, "model_call", [call(f"w{i}-0", version=2, caller="late")])
            if i % 3 == 0:
                cp.checkpoint()
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(data)})
    try:
        for _ in range(4):
            ctx = Context(store, store.reader(), Principal("auditor", "compliance"), config)
            result = execute(ctx, "query", "verify", {})
            assert result["ok"], result["problems"]
    finally:
        stop.set()
        thread.join()
    assert result["ledger"]["entries"] > 1
    store.close()


def test_large_batches_keep_the_highest_version_and_verify(tmp_path):
    """Batches above the small-write size go through Arrow frames: new keys, newer
    versions, re-deliveries, older versions and a key twice in one batch, with nested
    JSON in any key order; the store keeps the highest versions, ledgers only what
    changed, and verifies — and a changed replacement row is still caught."""
    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    n = 200
    write(store, "model_call", [call(f"c{i}") for i in range(n)])
    findings = [records.new("finding", finding_id=f"f{i}", kind="ungated_action", severity="high",
                            subject_ids=[f"c{i}"], detected_at=ago(), version=1, observed_at=ago(),
                            detail={"z": [{"b": 1.5, "a": None}], "a": "é \"quoted\"\n", "n": i})
                for i in range(n)]
    write(store, "finding", findings)
    second = ([call(f"c{i}", version=2, caller="late") for i in range(0, 50)]          # newer
              + [call(f"c{i}", caller="replayed") for i in range(50, 100)]             # same version
              + [call(f"c{i}", version=0, caller="older") for i in range(100, 150)]   # older
              + [call(f"n{i}") for i in range(50)]                                     # new keys
              + [call("n0", version=3, caller="twice")])                               # same batch
    before = store.ledger.head.seq
    write(store, "model_call", second)
    write(store, "finding", [{**f, "version": 2, "detail": {"n": -1, **{k: v for k, v in f["detail"].items() if k != "n"}}} for f in findings[:100]])
    con = store.reader()
    callers = dict(con.execute("SELECT caller, count(*) FROM model_calls GROUP BY 1").fetchall())
    assert callers == {"alice": 150 + 49, "late": 50, "twice": 1}
    assert con.execute("SELECT version FROM model_calls WHERE call_id = 'n0'").fetchall() == [(3,)]
    assert con.execute("SELECT count(*) FROM ledger_rows WHERE seq = ?", [before + 1]).fetchall() == [(100,)]
    detail = con.execute("SELECT detail FROM findings WHERE finding_id = 'f7'").fetchall()[0][0]
    assert orjson.loads(detail) == {"z": [{"b": 1.5, "a": None}], "a": "é \"quoted\"\n", "n": -1}
    result = verify(con, data)
    assert result["ok"], result["problems"]
    assert result["rows_checked"] == {**result["rows_checked"], "model_calls": n + 50, "findings": n}
    con.close()
    store.close()
    tamper = duckdb.connect(str(data / "audit.duckdb"))
    tamper.execute("UPDATE model_calls SET caller = 'mallory' WHERE call_id = 'c7'")
    tamper.close()
    result = _verify(data / "audit.duckdb", data)
    assert not result["ok"]
    assert result["first_problem"].startswith("model_calls call_id=c7: row content does not match its hash")


def test_row_hashes_in_bulk_are_the_bytes_of_the_definition(tmp_path):
    """Row hashes of large batches are built column by column; a single differing byte
    would make verification report tampering that never happened. Every table, every
    column type, with escapes, non-ASCII, extreme numbers, nested JSON and nulls."""
    from warehouse.tables import BULK_HASH_ROWS, RECORD_TABLES
    texts = ["", "plain", "é \"quoted\" \\ /", "\x00\x1f\x7f", "\u2028\u2029\ufeff", "\U0001F600", None]
    floats = [0.0, -0.0, 0.1, 1e-7, 1e16, 1.7976931348623157e308, 5e-324, 42.5, None]
    ints = [0, -1, 2**31 - 1, -2**31, None]
    nested = [{"b": [1.5, {"z": None, "a": "é"}], "a": 1e-7}, [], "text", 3, None, {"k": "\u2028"}]
    values = {"VARCHAR": texts, "DOUBLE": floats, "INTEGER": ints, "BIGINT": [2**63 - 1, -2**63, *ints],
              "BOOLEAN": [True, False, None], "VARCHAR[]": [[], ["a", None, "\x01é"], None],
              "JSON": nested, "TIMESTAMP": ["2026-01-31T10:15:00Z", "2026-01-31T10:15:00.123456+02:00", None]}
    store = Store(tmp_path / "audit.duckdb")
    n = BULK_HASH_ROWS + 10
    for kind, name in RECORD_TABLES.items():
        table = store.tables[kind]
        types = dict(store.con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                       "WHERE table_name = ?", [name]).fetchall())
        rows = []
        for i in range(n):
            row = {c: values[types[c]][(i + j) % len(values[types[c]])] for j, c in enumerate(table.columns)}
            row.update({k: f"k{i}" if types[k] == "VARCHAR" else i for k in table.key}, version=i % 7 + 1)
            rows.append(row)
        frame = table.frame(rows)
        assert frame.height == n
        reference = table.row_hashes_by_row(frame)
        assert table.row_hashes(frame, json_canonical=True) == reference, kind
        assert table.row_hashes(frame) == reference, kind
        # The same rows as the processor sends them (columns, nimtrail.columnar): the same
        # frame, so the same hashes.
        sent_kind, columns = columnar.decode(columnar.encode(kind, rows))
        from_columns = table.frame_of([columns])
        assert sent_kind == kind and from_columns.equals(frame), kind
        assert table.row_hashes(from_columns, json_canonical=True) == reference, kind
    store.close()


def test_rows_digest_in_bulk_is_the_bytes_of_the_definition():
    """The digest of a large entry's lines is built by polars; it must be the one
    verification recomputes line by line, for any key text and null versions or hashes."""
    import polars as pl

    from warehouse.ledger import BULK_LINES, items_digest, rows_digest
    keys = ["plain", "é \"quoted\" \\ /", "\x00\x1f\x7f", "\u2028\ufeff", "\U0001F600", "a|b|3", ""]
    n = BULK_LINES + 10
    items = pl.DataFrame({
        "tbl": ["model_calls", "deployments"] * (n // 2),
        "key": [keys[i % len(keys)] + str(i) for i in range(n)],
        "version": pl.Series([None if i % 5 == 0 else i - n // 2 for i in range(n)], dtype=pl.Int32),
        "row_hash": [None if i % 3 == 0 else f"{i:064x}" for i in range(n)]})
    assert items_digest(items) == rows_digest(items.iter_rows())
