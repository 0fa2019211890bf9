"""The large tables keep one row per key without a DuckDB index: the warehouse's key index
(warehouse/key_index.py) says which keys are new and where the others were written."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.warehouse_data import action, ago, call, write
from warehouse import schema, spilled_runs
from warehouse.key_index import ABSENT, KeyIndex, ValueIndex
from warehouse.store import Store
from warehouse.tables import SELF_INDEXED
from warehouse.verify import verify


@pytest.fixture(params=["in memory", "spilled"])
def spill(request, tmp_path, monkeypatch):
    """No spill directory, or one that takes every run past a few thousand entries, merged
    in chunks of a few hundred: the answers must be the same."""
    if request.param == "in memory":
        return None
    monkeypatch.setattr(spilled_runs, "SPILL_ENTRIES", 3_000)
    monkeypatch.setattr(spilled_runs, "MERGE_CHUNK", 700)
    return spilled_runs.SpillDirectory(tmp_path / "spill")


def test_key_index_gives_the_newest_second_of_each_key_across_merged_runs(spill):
    index = KeyIndex(spill)
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


def test_a_key_written_long_ago_is_replaced_once_and_a_redelivery_changes_nothing(tmp_path, spill):
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
    if not spill:
        assert not (data / "audit.duckdb.key-index").exists(), "a small store spills nothing"
    if spill:
        runs = store._key_indexes["model_calls"]._runs
        assert any(spilled_runs.is_spilled(hashes) for hashes, _ in runs), "the store's index spilled"
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
    [window] = store.written_where("model_calls", "call_id", ["old"])
    assert window[0] == window[1]
    assert store.written_where("model_calls", "call_id", ["never"]) == [], "certainly not stored"
    con = store.reader()
    assert [r["call_id"] for r in by_key(con, "model_calls", "call_id", "old", store.written_where)] == ["old"]
    # an index a commit behind names the wrong second: the lookup still finds the row
    stale = lambda table, column, value: [(1, 2)]  # noqa: E731
    assert [r["call_id"] for r in by_key(con, "model_calls", "call_id", "c5", stale)] == ["c5"]
    assert by_key(con, "model_calls", "call_id", "never", store.written_where) == []
    con.close()
    store.close()


def test_value_index_gives_every_second_a_value_was_written_in_across_merged_runs(spill):
    index = ValueIndex(spill)
    rng = np.random.default_rng(11)
    values = rng.integers(0, 2**63, 20_000, dtype=np.uint64)
    for start in range(0, len(values), 500):
        index.add(values[start:start + 500], np.full(500, start // 500 + 10, dtype=np.uint32))
    index.add(values[:2], np.array([900, 10], dtype=np.uint32))  # written again, and once more at 10
    assert index.seconds(np.array([int(values[0])], np.uint64)).tolist() == [10, 900]
    assert index.seconds(np.array([int(values[1])], np.uint64)).tolist() == [10]
    assert index.seconds(np.array([int(values[-1])], np.uint64)).tolist() == [49]
    assert index.seconds(np.array([int(values[0]) ^ (1 << 40)], np.uint64)).tolist() == [], "another value: nothing"
    assert index.seconds(values[[0, 1, -1, 0]]).tolist() == [10, 49, 900], "several at once: every second of any"
    assert index.nbytes <= 8 * (len(values) + 2)
    assert len(index._runs) <= 2 * int(np.log2(len(values)))
    if spill:
        assert index.nbytes < 2 * 8 * 3_000, "only the runs too small to spill are in memory"


def _resident_kb(array: np.ndarray) -> int:
    """The resident size of the mapping that holds `array`, from /proc/self/smaps."""
    address = array.__array_interface__["data"][0]
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            inside = start <= address < end
        elif inside and line.startswith("Rss:"):
            return int(line.split()[1])
    raise AssertionError("no mapping holds the array")


def test_spilled_runs_leave_no_file_and_hold_no_pages_after_a_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(spilled_runs, "SPILL_ENTRIES", 10_000)
    spill = spilled_runs.SpillDirectory(tmp_path / "spill")
    index = KeyIndex(spill)
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, 100_000, dtype=np.uint64)
    for start in range(0, len(keys), 5_000):
        index.add(keys[start:start + 5_000], np.full(5_000, 7, dtype=np.uint32))
    assert list((tmp_path / "spill").iterdir()) == [], "a spilled run's file is unlinked once mapped"
    spilled = [run for run in index._runs if spilled_runs.is_spilled(run[0])]
    assert spilled and index.nbytes < 12 * 10_000
    assert (index.lookup(keys[::97]) == 7).all()
    hashes = spilled[0][0]
    assert _resident_kb(hashes) == 0, "a lookup gives back the pages it read"
    assert int(hashes.sum()) and _resident_kb(hashes) > 0  # (the check sees pages when there are some)
    spilled_runs.release(hashes)
    assert _resident_kb(hashes) == 0
    spilled_runs.SpillDirectory(tmp_path / "spill")  # a store opening again: leftovers removed
    assert not (tmp_path / "spill").exists()
    assert (index.lookup(keys[:5]) == 7).all(), "mapped runs outlive their directory's files"


def _trace_back_everywhere(con, store, **given):
    """trace-back with the store's indexes, and reading every row: the same answer."""
    from warehouse.params import Params
    from warehouse.queries.calls import TRACE_BACK_PARAMS, trace_back
    params = Params({k: [v] for k, v in given.items()}, TRACE_BACK_PARAMS)
    located = trace_back(con, params, store.written_where)
    assert located == trace_back(con, params), given
    return located


def test_trace_back_by_lookup_columns_reads_only_where_the_values_were_written(tmp_path):
    from nimtrail import records
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call("old", days=20, tool_call_ids=["tc-a", "tc-b"])]
          + [call(f"c{i}") for i in range(200)])
    write(store, "tool_action", [action("a1", "old", days=20, tool_call_id="tc-a"),
                                 action("a2", "old", days=1, tool_call_id="tc-b")]
          + [action(f"x{i}", f"c{i}") for i in range(200)])
    finding = dict(kind="ungated_action", severity="high", detected_at=ago(), detail={"why": "test"})
    write(store, "finding", [records.new("finding", finding_id="f1", subject_ids=["a2", "old"], version=1,
                                         observed_at=ago(days=1), **finding),
                             records.new("finding", finding_id="f2", subject_ids=["old"], version=1,
                                         observed_at=ago(days=20), **finding)]
          + [records.new("finding", finding_id=f"g{i}", subject_ids=[f"c{i}"], version=1, observed_at=ago(),
                         **finding) for i in range(100)])
    con = store.reader()
    # the windows named: one per second the rows were written in, far apart
    assert len(store.written_where("tool_actions", "call_id", ["old"])) == 2
    assert store.written_where("tool_actions", "call_id", ["nobody"]) == []
    assert len(store.written_where("findings", "subject_ids", ["old"])) == 2
    assert store.written_where("model_calls", "tool_call_ids", ["tc-b"]) == store.written_where(
        "model_calls", "call_id", ["old"])
    # several values at once: where any of them is
    assert store.written_where("tool_actions", "call_id", ["nobody", "old"]) == store.written_where(
        "tool_actions", "call_id", ["old"])
    by_call = _trace_back_everywhere(con, store, call_id="old")
    assert [a["action_id"] for a in by_call["actions"]] == ["a1", "a2"]
    assert sorted(f["finding_id"] for f in by_call["findings"]) == ["f1", "f2"]
    assert _trace_back_everywhere(con, store, tool_call_id="tc-b")["call"]["call_id"] == "old"
    write(store, "tool_action", [action("a2", "old", days=0, tool_call_id="tc-b", version=2, outcome="error")])
    assert _trace_back_everywhere(con, store, action_id="a2")["actions"][0]["outcome"] == "error"
    assert _trace_back_everywhere(con, store, call_id="nobody")["found"] is False
    con.close()
    store.close()
    store = Store(tmp_path / "audit.duckdb")  # a restart: built again from the tables
    assert store.written_where("tool_actions", "call_id", ["old"]) is None, "not built before a write"
    write(store, "tool_action", [action("new", "c1")])
    assert len(store.written_where("tool_actions", "call_id", ["old"])) >= 2
    assert store.written_where("findings", "subject_ids", ["old"]) is None, "findings not written yet"
    store.close()


def test_a_key_committed_before_the_index_holds_it_is_never_called_absent(tmp_path, monkeypatch):
    """Between COMMIT and the key index's update a reader may see the row in DuckDB: the
    index must not answer 'no such row' then."""
    store = Store(tmp_path / "audit.duckdb")
    write(store, "model_call", [call(f"c{i}") for i in range(100)])
    seen = []
    add = KeyIndex.add

    def add_and_ask(index, hashes, secs):
        seen.append(store.written_where("model_calls", "call_id", ["late"]))
        add(index, hashes, secs)
    monkeypatch.setattr(KeyIndex, "add", add_and_ask)
    write(store, "model_call", [call("late")])
    assert seen == [None], "unknown while the commit is not yet indexed"
    monkeypatch.undo()
    assert store.written_where("model_calls", "call_id", ["late"]) not in (None, [])
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
