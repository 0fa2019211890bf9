"""Latency percentiles estimated from the calls' hourly and daily histograms: the
histograms follow every write (new calls, newer versions, retention), an existing store
gets them from its calls when migrated, and the estimates stay within the stated error
of the exact percentiles over exactly the range asked for."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from nimtrail import config as config_mod
from nimtrail.config import Duration, RetentionConfig
from tests.warehouse_data import NOW, call, deployment, write
from warehouse import latency_rollup, retention
from warehouse.access import Principal
from warehouse.operations import Context, execute
from warehouse.queries.latency_estimate import quantile
from warehouse.store import Store

SRE = Principal("sre", "viewer")
ADMIN = Principal("ops", "admin")
METRICS = ("ttft_ms", "e2e_ms", "queue_ms")
QUANTILES = ("p50", "p90", "p95", "p99")


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _latency(store: Store, **params: str) -> dict:
    ctx = Context(store, store.reader(), SRE, config_mod.load(None, env={}))
    return execute(ctx, "query", "latency", {k: [v] for k, v in params.items()})


def _histograms(store: Store) -> dict[str, list[tuple]]:
    """Both tables, the pending changes counted in."""
    with store.transaction() as con:
        latency_rollup.fold(con)
    con = store.reader()
    return {table: con.execute(f"SELECT * FROM {table} WHERE n <> 0 ORDER BY ALL").fetchall()
            for table in latency_rollup.LEVELS.values()}


def _rebuilt(store: Store) -> dict[str, list[tuple]]:
    with store.transaction() as con:
        latency_rollup.rebuild(con)
    return _histograms(store)


def _calls(n: int, start: dt.datetime, step: dt.timedelta, prefix: str = "c", **values) -> list[dict]:
    """n calls from `start` on, one every `step`, with spread-out timings."""
    out = []
    for i in range(n):
        t = start + i * step
        out.append(call(f"{prefix}-{i}", started_at=_iso(t), ended_at=_iso(t), observed_at=_iso(t),
                        ttft_ms=20.0 + (i * 37) % 400, e2e_ms=300.0 * (1 + (i * 13) % 17),
                        queue_ms=float(i % 5), **values))
    return out


@pytest.fixture()
def store(tmp_path):
    store = Store(tmp_path / "audit.duckdb")
    write(store, "deployment", [deployment("prod/llama", 1, gpu_type="H100", profile_name="vllm-bf16-tp1-pp1"),
                                deployment("prod/llama", 2, gpu_type="H100", profile_name="trt-fp8")])
    yield store
    store.close()


def test_histograms_follow_new_calls_and_newer_versions(store, monkeypatch):
    monkeypatch.setattr(latency_rollup, "FOLD_AT", 120)  # writes fold on their own, too
    start = (NOW - dt.timedelta(days=3)).replace(tzinfo=None)
    for i in range(0, 300, 100):  # writes of more than Store's SMALL_WRITE rows: the bulk path
        write(store, "model_call", _calls(300, start, dt.timedelta(minutes=17))[i:i + 100])
    pending = store.reader().execute("SELECT count(*) FROM latency_pending").fetchall()[0][0]
    assert pending < 120 and store.count("model_call") == 300
    # newer versions: another deployment version, other timings, a later hour, no timing;
    # a re-delivered old version changes nothing. Many at once (bulk), then a few (point
    # lookups).
    write(store, "model_call", [
        call(f"c-{i}", version=2, deployment_version=2, started_at=_iso(start + dt.timedelta(minutes=17 * i)))
        for i in range(100, 200)])
    write(store, "model_call", [
        call("c-1", version=2, deployment_version=2, ttft_ms=999.0, started_at=_iso(start + dt.timedelta(hours=30))),
        call("c-2", version=2, ttft_ms=None, e2e_ms=None, queue_ms=None, started_at=_iso(start)),
        call("c-3", version=1, ttft_ms=1.0)])
    incremental = _histograms(store)
    assert sum(r[-1] for r in incremental[latency_rollup.TABLE] if r[4] == 0) == 300
    assert incremental == _rebuilt(store)


def test_retention_keeps_the_histograms_of_what_remains(store):
    old = (NOW - dt.timedelta(days=40)).replace(tzinfo=None)
    write(store, "model_call", _calls(50, old, dt.timedelta(hours=3), prefix="old"))
    write(store, "model_call", _calls(20, (NOW - dt.timedelta(days=1)).replace(tzinfo=None),
                                      dt.timedelta(minutes=30), prefix="new"))
    retention.apply(store, RetentionConfig(metadata=Duration(30 * 86400), interval=Duration(0)), ADMIN)
    after = _histograms(store)
    assert sum(r[-1] for r in after[latency_rollup.TABLE] if r[4] == 0) == 20
    assert after == _rebuilt(store)


def test_an_existing_store_gets_its_histograms_when_migrated(tmp_path):
    path = tmp_path / "audit.duckdb"
    store = Store(path)
    write(store, "model_call", _calls(120, (NOW - dt.timedelta(days=2)).replace(tzinfo=None), dt.timedelta(minutes=23)))
    expected = _histograms(store)
    # as if the store predated migration 0006
    store.con.execute("DROP TABLE latency_histograms; DROP TABLE latency_histograms_daily; DROP TABLE latency_pending; "
                      "DELETE FROM schema_migrations WHERE id = 6")
    store.close()
    store = Store(path)
    assert _histograms(store) == expected and expected[latency_rollup.TABLE]
    store.close()


def test_estimates_are_within_the_stated_error_of_the_exact_percentiles(store):
    start = (NOW - dt.timedelta(days=4)).replace(minute=7, tzinfo=None)
    calls = _calls(2000, start, dt.timedelta(minutes=2, seconds=41))
    calls += _calls(500, start, dt.timedelta(minutes=9), prefix="v2", deployment_version=2)
    write(store, "model_call", calls)
    # a range with partial hours and partial days at both ends; with the last writes still
    # pending, then counted into the tables
    since, until = _iso(start + dt.timedelta(hours=5, minutes=13)), _iso(start + dt.timedelta(days=3, minutes=41))
    assert store.reader().execute("SELECT count(*) FROM latency_pending").fetchall()[0][0] == 2500
    for by in ("profile", "deployment", "model", "folded"):
        if by == "folded":
            with store.transaction() as con:
                latency_rollup.fold(con)
            by = "profile"
        exact = _latency(store, by=by, since=since, until=until, precision="exact")
        estimate = _latency(store, by=by, since=since, until=until, precision="estimate")
        assert (exact["precision"], exact["relative_error"]) == ("exact", None)
        assert estimate["precision"] == "estimate" and estimate["relative_error"] == pytest.approx(0.0905)
        assert len(exact["rows"]) == len(estimate["rows"]) >= 1
        for e, x in zip(estimate["rows"], exact["rows"]):
            assert e["calls"] == x["calls"] and e.get("profile_name") == x.get("profile_name")
            for metric in METRICS:
                assert e[f"{metric}_n"] == x[f"{metric}_n"]
                assert e[f"{metric}_source"] == "calls_histogram"
                for q in QUANTILES:
                    if x[f"{metric}_{q}"] == 0:
                        assert e[f"{metric}_{q}"] == 0
                    else:
                        assert e[f"{metric}_{q}"] == pytest.approx(x[f"{metric}_{q}"], rel=estimate["relative_error"])


def test_estimates_per_hour_and_day_buckets(store):
    start = (NOW - dt.timedelta(days=2)).replace(minute=0, second=0, tzinfo=None)
    write(store, "model_call", _calls(600, start, dt.timedelta(minutes=4)))
    for bucket in ("1h", "6h", "1d"):
        exact = _latency(store, bucket=bucket, precision="exact")["rows"]
        estimate = _latency(store, bucket=bucket, precision="estimate")["rows"]
        assert [(r["bucket_start"], r["calls"], r["ttft_ms_n"]) for r in estimate] == \
               [(r["bucket_start"], r["calls"], r["ttft_ms_n"]) for r in exact]
        assert all(math.isclose(e["e2e_ms_p95"], x["e2e_ms_p95"], rel_tol=0.0905)
                   for e, x in zip(estimate, exact))
    refused = pytest.raises(Exception, _latency, store, bucket="5m", precision="estimate")
    assert "bucket" in str(refused.value)
    # a small store is answered exactly unless an estimate is asked for
    assert _latency(store)["precision"] == "exact"


def test_quantile_of_a_histogram():
    assert quantile(0.5, []) is None
    assert quantile(0.99, [(latency_rollup.ZERO_BUCKET, 5)]) == 0.0
    low, high = latency_rollup.bucket_bounds(40)  # 32 ms .. 34.9 ms
    assert low == 32.0 and high == pytest.approx(32 * 2 ** (1 / 8))
    assert low < quantile(0.5, [(40, 3)]) < high
    # the rank falls into the upper bucket
    assert quantile(0.9, [(40, 1), (48, 9)]) > 64.0
