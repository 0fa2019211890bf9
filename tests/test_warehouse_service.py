"""The warehouse as users run it: a real process consuming real Kafka topics, killed at its
worst moment, asked through the CLI and its API, and tampered with while stopped."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
from kafka import KafkaProducer

from nimtrail import kafka_io, records
from tests.harness import Env, wait_for
from tests.warehouse_data import NOW, action, call, deployment

COMPLIANCE = {"NIMTRAIL_TOKEN": "compliance-secret"}
VIEWER = {"NIMTRAIL_TOKEN": "viewer-secret"}


def _produce(env: Env, kind: str, recs: list[dict], per_message: int) -> None:
    topic = env.config.topics.audit()[kind]
    producer = KafkaProducer(bootstrap_servers=env.config.kafka.bootstrap, acks="all")
    for i in range(0, len(recs), per_message):
        chunk = recs[i:i + per_message]
        producer.send(topic, key=records.key_of(kind, chunk[0]).encode(),
                      value=records.encode_batch(kind, chunk))
    producer.flush()
    producer.close()


def _ensure_topics(env: Env) -> None:
    t = env.config.topics
    kafka_io.ensure_topics(env.config, [*t.audit().values(), t.dlq, t.digests])


def _db(env: Env) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(env.config.warehouse_path), read_only=True)


def test_killed_right_after_commit_loses_and_doubles_nothing(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, warehouse={"max_poll_records": 3, "checkpoint_interval": "1s"})
    _ensure_topics(env)
    calls = [call(f"call-{i:03d}", caller=f"user-{i % 7}") for i in range(200)]
    _produce(env, "model_call", calls, per_message=10)
    _produce(env, "tool_action", [action(f"act-{i:03d}", f"call-{i:03d}") for i in range(0, 200, 4)],
             per_message=5)
    _produce(env, "model_call", calls[:50], per_message=10)  # a replay: same versions again
    _produce(env, "model_call", [call(f"call-{i:03d}", version=2, caller="joined-late")
                                 for i in range(0, 200, 10)], per_message=10)

    crashed = env.start("warehouse", faults="warehouse.after_commit")
    assert crashed.wait(timeout=120) == 137, env.log("warehouse")[-2000:]
    con = _db(env)
    first = con.execute("SELECT count(*) FROM ledger_rows").fetchall()[0][0]
    con.close()
    assert 0 < first < 250  # one batch committed, then the process died

    env.start("warehouse")
    env.wait_ready("warehouse")

    def settled() -> dict | None:
        done = env.cli("verify", "--json", check=False)
        doc = json.loads(done.stdout) if done.stdout.strip() else {}
        rows = doc.get("rows_checked", {})
        return doc if rows.get("model_calls") == 200 and rows.get("tool_actions") == 50 else None

    doc = wait_for(settled, timeout=90, what="every record in the store")
    assert doc["ok"], doc["problems"]
    env.stop_all()

    con = _db(env)
    doubled = con.execute("SELECT tbl, key, version, count(*) FROM ledger_rows "
                          "WHERE tbl IN ('model_calls', 'tool_actions') "
                          "GROUP BY ALL HAVING count(*) > 1").fetchall()
    assert doubled == []
    keys = con.execute("SELECT count(DISTINCT key) FROM ledger_rows WHERE tbl = 'model_calls'").fetchall()
    assert keys[0][0] == 200
    late = con.execute("SELECT count(*) FROM model_calls WHERE version = 2 AND caller = 'joined-late'").fetchall()
    assert late[0][0] == 20
    con.close()
    offline = env.cli("verify")
    assert offline.stdout.startswith("verified:"), offline.stdout


def _tokens(path: Path) -> Path:
    path.write_text(
        "tokens:\n"
        f"  {COMPLIANCE['NIMTRAIL_TOKEN']}: {{role: compliance, name: audit-team}}\n"
        f"  \"sha256:{hashlib.sha256(VIEWER['NIMTRAIL_TOKEN'].encode()).hexdigest()}\": "
        "{role: viewer, name: sre}\n")
    return path


def test_compliance_workflow_and_tampering_with_a_stopped_warehouse(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, warehouse={
        "checkpoint_interval": "1s", "tokens_file": str(_tokens(tmp_path / "tokens.yaml")),
        "retention": {"metadata": "100d", "content": "30d", "interval": 0}})
    _ensure_topics(env)
    _produce(env, "deployment", [deployment()], per_message=1)
    _produce(env, "model_call", [call(f"old-{who}-{i}", days=150, caller=who)
                                 for who in ("alice", "bob") for i in range(5)]
             + [call(f"new-{i}", caller="carol") for i in range(10)], per_message=5)
    env.start("warehouse")
    env.wait_ready("warehouse")
    wait_for(lambda: len(json.loads(env.cli("calls", "--json", "--limit", "100", env=VIEWER).stdout)["rows"]) == 20,
             timeout=60, what="the calls to be queryable")

    # roles through the CLI: no token, wrong role
    no_token = env.cli("calls", check=False)
    assert no_token.returncode == 2 and "401" in no_token.stderr
    viewer_verify = env.cli("verify", check=False, env=VIEWER)
    assert viewer_verify.returncode == 2 and "403" in viewer_verify.stderr
    latency = env.cli("latency", env=VIEWER).stdout
    assert "H100" in latency and "vllm-bf16-tp1-pp1" in latency

    # a legal hold, then retention: alice's old calls stay, bob's go
    hold = env.cli("hold", "add", "--caller", "alice", "--reason", "litigation 2025-17", env=COMPLIANCE)
    assert "in force" in hold.stdout
    dry = env.cli("retention", "apply", "--dry-run", "--json", env=COMPLIANCE)
    assert json.loads(dry.stdout)["rows"] > 0
    applied = json.loads(env.cli("retention", "apply", "--json", env=COMPLIANCE).stdout)
    deleted = next(s for s in applied["steps"] if s["table"] == "model_calls" and s["action"] == "delete")
    assert (deleted["rows"], deleted["held_rows"]) == (5, 5)
    left = json.loads(env.cli("calls", "--json", "--limit", "100", env=VIEWER).stdout)["rows"]
    assert sorted({r["caller"] for r in left}) == ["alice", "carol"] and len(left) == 15

    out = tmp_path / "report.csv"
    reported = env.cli("report", "retention", "--from", "2000-01-01", "--to", "2100-01-01",
                       "--format", "csv", "--out", str(out), env=COMPLIANCE).stdout
    assert hashlib.sha256(out.read_bytes()).hexdigest() in reported
    text = out.read_text()
    assert "purge,metadata,model_calls" in text and "litigation 2025-17" in text
    assert "audit-team" in text and "sre" in text  # who accessed what
    # a finished day as immutable Parquet partitions, each recorded with its SHA-256
    day = (NOW - dt.timedelta(days=150)).strftime("%Y-%m-%d")
    archived = tmp_path / "archive"
    for _ in range(2):  # a second run finds identical partitions and leaves them be
        env.cli("archive", "--day", day, "--out", str(archived), env=COMPLIANCE)
    manifest = json.loads((archived / f"manifest-{day}.json").read_text())
    calls_part = next(f for f in manifest["files"] if f["table"] == "model_calls")
    part = archived / calls_part["file"]
    assert hashlib.sha256(part.read_bytes()).hexdigest() == calls_part["sha256"]
    frame = pl.read_parquet(part)
    assert sorted(frame["call_id"]) == [f"old-alice-{i}" for i in range(5)]
    assert frame["row_hash"].null_count() == 0
    env.stop_all()

    # stopped: verify opens the file itself
    clean = env.cli("verify")
    assert clean.stdout.startswith("verified:"), clean.stdout
    pristine = tmp_path / "pristine"
    shutil.copytree(env.config.data_path, pristine)

    def restore() -> None:
        shutil.rmtree(env.config.data_path)
        shutil.copytree(pristine, env.config.data_path)

    def broken(*expected: str) -> None:
        result = env.cli("verify", check=False)
        assert result.returncode == 1, result.stdout
        assert "VERIFICATION FAILED" in result.stdout
        for text in expected:
            assert text in result.stdout, result.stdout
        restore()

    con = duckdb.connect(str(env.config.warehouse_path))
    con.execute("UPDATE model_calls SET caller = 'mallory' WHERE call_id = 'new-3'")
    con.close()
    broken("model_calls call_id=new-3", "a field was changed")

    con = duckdb.connect(str(env.config.warehouse_path))
    con.execute("DELETE FROM model_calls WHERE call_id = 'old-alice-2'")
    con.close()
    broken("model_calls call_id=old-alice-2", "row is missing")

    digest_files = sorted((env.config.data_path / "digests").rglob("nimtrail-digest-*.json"))
    assert digest_files
    digest_files[0].unlink()
    broken(digest_files[0].name, "digest 1 is missing")

    assert env.cli("verify").returncode == 0
