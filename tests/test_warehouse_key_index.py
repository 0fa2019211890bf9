"""The large tables keep one row per key without a DuckDB index: the warehouse's key index
(warehouse/key_index.py) says which keys are new and where the others were written."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from tests.warehouse_data import call, write
from warehouse import schema
from warehouse.key_index import ABSENT, KeyIndex
from warehouse.store import Store
from warehouse.tables import SELF_INDEXED
from warehouse.verify import verify


def test_key_index_gives_the_newest_second_of_each_key_across_merged_runs():
    index = KeyIndex()
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, 50_000, dtype=np.uint64)
    for start in range(0, len(keys), 1_000):  # one run per commit, merged as they grow
        index.add(keys[start:start + 1_000], np.full(1_000, start // 1_000 + 1, dtype=np.uint32))
    index.add(keys[:3], np.array([900, 901, 902], dtype=np.uint32))  # rewritten later
    assert list(index.lookup(keys[:4])) == [900, 901, 902, 1]
    assert list(index.lookup(keys[-2:])) == [50, 50]
    assert index.lookup(np.array([1, 2], dtype=np.uint64)).tolist() == [ABSENT, ABSENT]
    assert len(index._runs) <= 2 * int(np.log2(len(keys))), "runs are merged as they grow"
    index.clear()
    assert index.lookup(keys[:1]).tolist() == [ABSENT]


def _only(store: Store, call_id: str) -> list[tuple]:
    return store.reader().execute(
        "SELECT version, caller FROM model_calls WHERE call_id = ?", [call_id]).fetchall()


def test_a_key_written_long_ago_is_replaced_once_and_a_redelivery_changes_nothing(tmp_path):
    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    write(store, "model_call", [call(f"old{i}", days=20) for i in range(100)])
    for batch in range(10):  # later rows in between: the old ones are far behind
        write(store, "model_call", [call(f"b{batch}-{i}") for i in range(500)])
    write(store, "model_call", [call("old7", days=20, version=2, caller="late"),
                                call("old8", days=20, caller="replayed"),       # same version
                                call("old9", days=20, version=0, caller="older")])
    assert _only(store, "old7") == [(2, "late")]
    assert _only(store, "old8") == [(1, "alice")]
    assert _only(store, "old9") == [(1, "alice")]

    store.close()  # a restart: the index is built again from the table
    store = Store(data / "audit.duckdb")
    write(store, "model_call", [call("old7", version=2, caller="again"), call("old8", version=3, caller="v3"),
                                *[call(f"b3-{i}") for i in range(200)]])
    assert _only(store, "old7") == [(2, "late")]
    assert _only(store, "old8") == [(3, "v3")]
    con = store.reader()
    assert con.execute("SELECT count(*), count(DISTINCT call_id) FROM model_calls").fetchall() == [(5100, 5100)]
    result = verify(con, data)
    assert result["ok"], result["problems"]
    con.close()
    store.close()


def test_a_row_without_observed_at_is_still_found_and_replaced(tmp_path):
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call("untimed", observed_at=None)] + [call(f"c{i}") for i in range(100)])
    write(store, "model_call", [call("untimed", version=2, caller="found"), call("c5", version=2)])
    assert _only(store, "untimed") == [(2, "found")]
    assert store.reader().execute("SELECT count(*) FROM model_calls").fetchall() == [(101,)]
    store.close()


def test_verify_names_a_key_stored_twice(tmp_path):
    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    write(store, "model_call", [call(f"c{i}") for i in range(3)])
    store.close()
    con = duckdb.connect(str(data / "audit.duckdb"))
    con.execute("INSERT INTO model_calls SELECT * FROM model_calls WHERE call_id = 'c1'")
    result = verify(con, data)
    con.close()
    assert not result["ok"]
    assert any(p["check"] == "unique" and "call_id=c1" in p["where"] and "2 times" in p["message"]
               for p in result["problems"]), result["problems"]


def test_a_store_written_with_primary_keys_is_migrated_and_keeps_working(tmp_path, monkeypatch):
    """A store from before migration 0010 (primary keys and ART indexes on the large tables)
    opens, loses those indexes, verifies, and keeps one row per key."""
    data = tmp_path / "data"
    everything = schema._migrations
    monkeypatch.setattr(schema, "_migrations", lambda: [m for m in everything() if m[0] < 10])
    old = Store(data / "audit.duckdb")
    write(old, "model_call", [call(f"c{i}") for i in range(300)])
    assert old.reader().execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'model_calls' "
                                "AND constraint_type = 'PRIMARY KEY'").fetchall() == [(1,)]
    old.close()
    monkeypatch.setattr(schema, "_migrations", everything)

    store = Store(data / "audit.duckdb")
    con = store.reader()
    assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name IN "
                       f"({', '.join('?' for _ in SELF_INDEXED)})", sorted(SELF_INDEXED)).fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
                       "AND table_name = 'model_calls'").fetchall() == [(0,)]
    write(store, "model_call", [call("c1", version=2, caller="after"), call("c2")] + [call(f"n{i}") for i in range(100)])
    assert _only(store, "c1") == [(2, "after")]
    assert con.execute("SELECT count(*), count(DISTINCT call_id) FROM model_calls").fetchall() == [(400, 400)]
    result = verify(con, data)
    assert result["ok"], result["problems"]
    con.close()
    store.close()


@pytest.mark.parametrize("rows", [1, 80])
def test_small_and_large_writes_to_a_large_table_take_the_same_path(tmp_path, rows):
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call(f"c{i}") for i in range(rows)])
    write(store, "model_call", [call(f"c{i}", version=2) for i in range(rows)])
    write(store, "model_call", [call(f"c{i}", version=2, caller="replayed") for i in range(rows)])
    con = store.reader()
    assert con.execute("SELECT count(*), min(version), max(caller) FROM model_calls").fetchall() == [(rows, 2, "alice")]
    con.close()
    store.close()


def test_a_lookup_by_key_reads_the_second_the_index_names_and_everything_when_that_misses(tmp_path):
    from warehouse.queries.common import by_key
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call("old", days=20)] + [call(f"c{i}") for i in range(100)])
    window = store.written_within("model_calls", ("old",))
    assert window is not None and window[0] == window[1]
    assert store.written_within("model_calls", ("never",)) is None
    con = store.reader()
    assert [r["call_id"] for r in by_key(con, "model_calls", "call_id", "old", store.written_within)] == ["old"]
    # an index a commit behind names the wrong second: the lookup still finds the row
    stale = lambda table, key: (1, 2)  # noqa: E731
    assert [r["call_id"] for r in by_key(con, "model_calls", "call_id", "c5", stale)] == ["c5"]
    assert by_key(con, "model_calls", "call_id", "never", store.written_within) == []
    con.close()
    store.close()


def test_the_key_index_memory_is_on_the_metrics(tmp_path):
    from nimtrail.ops import StageMetrics
    from warehouse.service import report_memory
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call(f"c{i}") for i in range(100)])
    metrics = StageMetrics("warehouse")
    report_memory(store, metrics)
    line = next(l for l in metrics.exposition().decode().splitlines()
                if l.startswith("nimtrail_warehouse_key_index_bytes "))
    assert float(line.split()[1]) >= 100 * 12
    store.close()


def test_a_replacement_that_rolls_back_leaves_the_key_where_its_row_still_is(tmp_path):
    """The poison path halves a poll and rolls back: the key index must not move a key to
    the second of a replacement that was never committed."""
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call("k", days=1)] + [call(f"c{i}") for i in range(100)])
    table = store.tables["model_call"]
    with pytest.raises(RuntimeError):
        with store.transaction() as con:
            store.put(con, table, table.frame([call("k", version=2, caller="rolled back")]))
            raise RuntimeError("the poll is refused")
    write(store, "model_call", [call("k", version=2, caller="retried")])
    assert _only(store, "k") == [(2, "retried")]
    store.close()
