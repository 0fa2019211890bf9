"""A rollback of recent history is caught, and verify reports clearly on damaged files.

A store rolled back as a whole (its newest ledger entries, their rows, digest files and
checkpoint rows) is consistent with itself; the digests published before the rollback
(digests topic, write-once copy) are what show it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from nimtrail.ops import StageMetrics
from tests.harness import Env, wait_for
from tests.test_warehouse_service import _ensure_topics, _produce
from tests.warehouse_data import call, checkpointer, write
from warehouse import digests
from warehouse.checkpoint import Checkpointer
from warehouse.published import Published, Source
from warehouse.rollback import Freshness
from warehouse.store import Store
from warehouse.tables import load_tables
from warehouse.verify import verify


def _rows(env: Env) -> int:
    return len(json.loads(env.cli("calls", "--json", "--limit", "500").stdout)["rows"])


def _roll_back(path: Path, data: Path) -> tuple[int, int]:
    """Cut the stopped store back to the last digest before the `late-*` calls: ledger
    entries after that digest's checkpoint entry, the rows they wrote, the newer digest
    files and their checkpoint rows. Returns (kept digest, kept ledger head)."""
    con = duckdb.connect(str(path))
    late = con.execute("SELECT min(seq) FROM ledger_rows WHERE key LIKE 'late-%'").fetchall()[0][0]
    kept, chain_seq = con.execute("SELECT digest_seq, chain_seq FROM checkpoints WHERE chain_seq < ? "
                                  "ORDER BY digest_seq DESC LIMIT 1", [late]).fetchall()[0]
    head = chain_seq + 1  # the entry recording digest `kept`, written with it
    assert con.execute("SELECT kind FROM ledger WHERE seq = ?", [head]).fetchall() == [("checkpoint",)]
    # a clean cut: every key written after `head` is new there, so deleting its row undoes it
    assert con.execute("SELECT count(*) FROM ledger_rows a JOIN ledger_rows b USING (tbl, key) "
                       "WHERE a.seq > ? AND b.seq <= ?", [head, head]).fetchall() == [(0,)]
    con.execute("BEGIN TRANSACTION")
    for table in load_tables(con).values():
        con.execute(f"DELETE FROM {table.name} t WHERE {table.key_sql} IN "
                    "(SELECT key FROM ledger_rows WHERE tbl = ? AND seq > ?)", [table.name, head])
    con.execute("DELETE FROM ledger_rows WHERE seq > ?", [head])
    con.execute("DELETE FROM ledger WHERE seq > ?", [head])
    con.execute("DELETE FROM digest_publications WHERE digest_seq > ?", [kept])
    con.execute("COMMIT")
    con.close()
    for file in digests.list_files(data / "digests"):
        if digests.number_in_name(file) > kept:
            file.unlink()
    return kept, head


def test_a_rolled_back_store_fails_verification_naming_the_rollback(tmp_path: Path, kafka_bootstrap: str):
    copy = tmp_path / "worm"
    env = Env(tmp_path, kafka_bootstrap, warehouse={"checkpoint_interval": "1s",
                                                    "digest_copy_dir": str(copy)})
    _ensure_topics(env)
    _produce(env, "model_call", [call(f"early-{i:02d}") for i in range(20)], per_message=5)
    env.start("warehouse")
    env.wait_ready("warehouse")
    wait_for(lambda: _rows(env) == 20, timeout=60, what="the early calls")
    # a digest signed after the early calls, before the late ones arrive
    signed = wait_for(lambda: [d for d in map(digests.read, digests.list_files(copy))
                               if (d[1] or {}).get("counts", {}).get("model_calls") == 20],
                      timeout=60, what="a published digest of the early calls")
    assert signed
    _produce(env, "model_call", [call(f"late-{i:02d}") for i in range(20)], per_message=5)
    wait_for(lambda: _rows(env) == 40, timeout=60, what="the late calls")
    # while the warehouse holds the file, offline verify says so (and only then)
    held = env.cli("verify", "--offline", check=False)
    assert held.returncode == 2 and "another process has it open" in held.stderr, held.stderr
    env.stop_all()  # the shutdown digest covers the late calls and is published
    assert env.cli("verify").stdout.startswith("verified:")
    published = max(digests.number_in_name(p) for p in digests.list_files(copy))

    kept, head = _roll_back(env.config.warehouse_path, env.config.data_path)
    assert kept < published

    for args in (["verify"], ["verify", "--offline"]):
        result = env.cli(*args, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        first = result.stdout.splitlines()[0]
        assert first.startswith("VERIFICATION FAILED:") and "rolled back" in first, result.stdout
        assert f"its newest digest is {kept} and its ledger ends at entry {head}" in first
        assert f"digest {published} " in first
    doc = json.loads(env.cli("verify", "--offline", "--json", check=False).stdout)
    # nothing else is wrong with the store: only the published digests show the rollback
    assert {p["check"] for p in doc["problems"]} <= {"rollback", "published"}, doc["problems"]
    assert any(p["where"].startswith("digests topic") for p in doc["problems"]), doc

    # restarted on the rolled-back store, the warehouse signs new digests under numbers
    # already published; online verification names the rollback all the same
    env.start("warehouse")
    env.wait_ready("warehouse")
    online = env.cli("verify", check=False)
    assert online.returncode == 1, online.stdout + online.stderr
    assert "no warehouse answers" not in online.stderr
    assert "rolled back" in online.stdout.splitlines()[0], online.stdout
    assert f"digest {kept + 1} is not the local file" in online.stdout
    env.stop_all()


def _store_file(tmp_path: Path) -> Env:
    """A stopped store with enough rows that half of the file holds some of them."""
    # No Kafka configured (and no bundled broker in this data_dir): verify notes that it
    # cannot read the digests topic and goes on at once. With an address that refuses
    # connections, each verify of a half file waited out the Kafka client's 30 s bootstrap
    # before opening the store (an empty file fails to open before Kafka is asked).
    env = Env(tmp_path, "")
    store = Store(env.config.warehouse_path)
    cp = checkpointer(store, env.config.data_path)
    for batch in range(5):
        write(store, "model_call", [call(f"c{batch}-{i}") for i in range(500)])
        cp.checkpoint()
    store.close()
    return env


@pytest.mark.parametrize("damage, expected", [
    ("half", "is damaged"),
    ("empty", "is empty (0 bytes)"),
])
def test_verify_of_a_damaged_store_file_says_so_in_one_line(tmp_path: Path, damage: str, expected: str):
    env = _store_file(tmp_path)
    path = env.config.warehouse_path
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "half" else b"")
    for args in (["verify", "--offline"], ["verify"]):
        result = env.cli(*args, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "another process" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if not line.startswith("nimtrail: no warehouse")]
        assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.stderr


def test_idle_digests_repeat_the_chain_head_and_numbers_go_on_after_a_restart(tmp_path: Path):
    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    cp = checkpointer(store, data)
    write(store, "model_call", [call("c1")])
    busy = cp.checkpoint()
    idle = [cp.checkpoint(), cp.checkpoint()]
    assert "idle" not in busy and all(d["idle"] for d in idle)
    assert [d["digest_seq"] for d in (busy, *idle)] == [1, 2, 3]
    assert idle[0]["chain"] == idle[1]["chain"] and idle[0]["chain"]["seq"] == busy["chain"]["seq"] + 1
    assert store.reader().execute("SELECT count(*) FROM checkpoints").fetchall() == [(1,)]
    store.close()

    store = Store(data / "audit.duckdb")  # a restart: numbering continues from the files
    cp = checkpointer(store, data)
    assert cp.checkpoint()["digest_seq"] == 4
    write(store, "model_call", [call("c2")])
    assert cp.checkpoint()["digest_seq"] == 5
    store.close()
    con = duckdb.connect(str(data / "audit.duckdb"), read_only=True)
    result = verify(con, data)
    con.close()
    assert result["ok"], result["problems"]
    assert result["digests"]["checked"] == 5


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, list[tuple[str, bytes]]]:
    """A stopped store with four digests: (db file, data dir, the digest files)."""
    data = tmp_path / "data"
    store = Store(data / "audit.duckdb")
    cp = Checkpointer(store, data, 60, StageMetrics("warehouse"))
    for i in range(4):
        write(store, "model_call", [call(f"c{i}")])
        cp.checkpoint()
    store.close()
    return data / "audit.duckdb", data, digests.load_all(data / "digests")


def _check(path: Path, data: Path, published: Published, online: bool, now: dt.datetime) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return verify(con, data, published=published, freshness=Freshness(60, online, now))
    finally:
        con.close()


def test_a_digest_number_missing_everywhere_is_named(signed):
    path, data, files = signed
    digests.list_files(data / "digests")[2].unlink()  # digest 3, gone locally
    topic = Source("digests topic t", [f for f in files if "000000003" not in f[0]])
    result = _check(path, data, Published([topic]), False, dt.datetime.now(dt.timezone.utc))
    assert any(p["check"] == "numbering" and p["where"] == "digest 3" for p in result["problems"]), result


def test_the_newest_digest_older_than_two_intervals_fails_only_while_running(signed):
    path, data, files = signed
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
    running = _check(path, data, Published([Source("digests topic t", files)]), True, later)
    assert [p["check"] for p in running["problems"]] == ["freshness"], running["problems"]
    stale = running["problems"][0]
    assert "10 min" in stale["message"] and "two checkpoint intervals (2 min 0 s)" in stale["message"]
    stopped = _check(path, data, Published([Source("digests topic t", files)]), False, later)
    assert stopped["ok"], stopped["problems"]
    assert any("newest digest, 4" in w and "10 min" in w for w in stopped["warnings"])


def test_a_published_digest_that_differs_from_the_local_file_is_named(signed):
    """Same number, validly signed, other content: what a rolled-back store that was
    restarted publishes."""
    path, data, files = signed
    rel, raw = files[1]
    doc = digests.parse(raw)
    key = digests.load_or_create_key(digests.keys_dir(data))
    other = digests.file_bytes(digests.sign({**doc, "created_at": "2031-01-01T00:00:00.000000Z"}, key))
    result = _check(path, data, Published([Source("digest copy c", [(rel, other)])]), False,
                    dt.datetime.now(dt.timezone.utc))
    assert not result["ok"]
    assert result["problems"][0]["where"] == f"digest copy c: {rel}"
    assert result["problems"][0]["message"].startswith(f"digest 2 is not the local file {rel}")
