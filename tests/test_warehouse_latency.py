"""Latency percentiles: exact from calls, by GPU profile and deployment version, and
estimated from histogram samples where calls carry no timings."""

from __future__ import annotations

import datetime as dt

import pytest

from nimtrail import config as config_mod
from tests.warehouse_data import NOW, ago, call, deployment, sample, write
from warehouse.access import Principal
from warehouse.operations import Context, execute
from warehouse.queries.latency import histogram_quantile
from warehouse.store import Store

SRE = Principal("sre", "viewer")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("latency") / "audit.duckdb"
    store = Store(path)
    write(store, "deployment", [
        deployment("prod/llama", 1, valid_from=ago(days=30), gpu_type="H100", profile_name="vllm-bf16-tp1-pp1"),
        # the upgrade: same deployment, new image and profile, from 2 days ago
        deployment("prod/llama", 2, valid_from=ago(days=2), gpu_type="H100",
                   profile_name="tensorrt_llm-h100-fp8-tp1-throughput"),
        deployment("prod/summarizer", 1, valid_from=ago(days=30), gpu_type="A100",
                   profile_name="vllm-fp16-tp2", model_id="mistral-7b"),
    ])
    calls = [call(f"v1-{i}", days=3, deployment_version=1, ttft_ms=float(i), e2e_ms=10.0 * i,
                  queue_ms=None) for i in range(1, 101)]
    calls += [call(f"v2-{i}", days=1, deployment_version=2, ttft_ms=float(i) / 2, e2e_ms=5.0 * i,
                   queue_ms=1.0) for i in range(1, 101)]
    base = (NOW - dt.timedelta(hours=5)).replace(minute=0, second=0)

    def at(hours: float) -> str:
        return (base + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")

    # the summarizer's calls only reached the warehouse from the client side: no timings
    calls += [call(f"sum-{i}", started_at=at(1.5), deployment_id="prod/summarizer",
                   deployment_version=1, model="mistral-7b", ttft_ms=None, e2e_ms=None,
                   queue_ms=None) for i in range(10)]
    write(store, "model_call", calls)

    metric = "vllm:time_to_first_token_seconds"
    write(store, "metric_sample", [
        sample("h0", at(0), metric, [[0.1, 10], [0.2, 10], [0.5, 10], ["+Inf", 10]],
               deployment_id="prod/summarizer"),
        sample("h1", at(2), metric, [[0.1, 10], [0.2, 60], [0.5, 110], ["+Inf", 110]],
               deployment_id="prod/summarizer"),
        # same series as a mapping, one hour later: 100 more requests, all under 0.1 s
        sample("h2", at(3), metric, {"0.1": 110, "0.2": 160, "0.5": 210, "+Inf": 210},
               deployment_id="prod/summarizer"),
        sample("l1", at(1), metric, [[0.1, 0], ["+Inf", 5000]], deployment_id="prod/llama"),
        sample("l2", at(2), metric, [[0.1, 0], ["+Inf", 9000]], deployment_id="prod/llama"),
    ])
    yield store, at
    store.close()


def _latency(store: Store, **params: str) -> dict:
    config = config_mod.load(None, env={})
    ctx = Context(store, store.reader(), SRE, config)
    return execute(ctx, "query", "latency", {k: [v] for k, v in params.items()})


def test_exact_percentiles_by_gpu_profile(store):
    store, _at = store
    rows = {(r["gpu_type"], r["profile_name"]): r for r in _latency(store, source="calls")["rows"]}
    before = rows[("H100", "vllm-bf16-tp1-pp1")]
    assert before["calls"] == 100 and before["ttft_ms_source"] == "calls"
    # quantile_cont over 1..100: linear interpolation between closest ranks
    assert (before["ttft_ms_p50"], before["ttft_ms_p90"], before["ttft_ms_p95"],
            before["ttft_ms_p99"]) == (50.5, 90.1, 95.05, 99.01)
    assert before["e2e_ms_p50"] == 505.0
    assert before["queue_ms_n"] == 0 and before["queue_ms_p50"] is None
    after = rows[("H100", "tensorrt_llm-h100-fp8-tp1-throughput")]
    assert after["ttft_ms_p50"] == 25.25 and after["queue_ms_p99"] == 1.0


def test_deployment_versions_split_before_and_after_an_upgrade(store):
    store, _at = store
    rows = _latency(store, by="deployment", deployment_id="prod/llama", source="calls")["rows"]
    assert [(r["deployment_version"], r["calls"], r["ttft_ms_p50"]) for r in rows] == [
        (1, 100, 50.5), (2, 100, 25.25)]
    assert rows[1]["profile_name"] == "tensorrt_llm-h100-fp8-tp1-throughput"


def test_estimated_from_histograms_where_calls_lack_timings(store):
    store, at = store
    rows = _latency(store, by="model", since=at(1), until=at(2.5))["rows"]
    estimated = next(r for r in rows if r["model"] == "mistral-7b")
    assert estimated["calls"] == 10 and estimated["ttft_ms_source"] == "metrics"
    # increase over the window (against the sample before it): 0.2s: 50, 0.5s: 100
    assert estimated["ttft_ms_n"] == 100
    assert estimated["ttft_ms_p50"] == pytest.approx(200.0)
    assert estimated["ttft_ms_p90"] == pytest.approx(440.0)
    # calls with timings are never overridden by estimates
    exact = _latency(store, by="model", model="meta/llama-3.1-8b-instruct")["rows"]
    assert [(r["ttft_ms_source"], r["ttft_ms_n"]) for r in exact] == [("calls", 200)]
    histogram_only = _latency(store, by="model", model="meta/llama-3.1-8b-instruct", source="metrics")
    assert histogram_only["rows"][0]["ttft_ms_n"] == 9000


def test_histogram_estimates_per_time_bucket(store):
    store, at = store
    rows = _latency(store, by="profile", bucket="1h", source="metrics", since=at(1))["rows"]
    a100 = [r for r in rows if r["gpu_type"] == "A100"]
    assert [r["bucket_start"] for r in a100] == [at(2).replace("Z", ".000000Z"), at(3).replace("Z", ".000000Z")]
    assert [r["ttft_ms_n"] for r in a100] == [100, 100]
    assert a100[1]["ttft_ms_p50"] == pytest.approx(50.0)  # all 100 in the first bucket, 0-0.1 s


def test_histogram_quantile_edges():
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {0.1: 0, float("inf"): 0}) is None
    # everything above the highest finite bound: the estimate is that bound
    assert histogram_quantile(0.99, {0.1: 0, 0.5: 0, float("inf"): 10}) == 0.5


@pytest.mark.parametrize("bucket, seconds", [("10s", 10), ("30s", 30)])
def test_sub_minute_buckets_for_short_windows(store, bucket, seconds):
    s, _at = store
    rows = _latency(s, by="deployment", bucket=bucket, deployment_id="prod/llama", source="calls")["rows"]
    starts = {r["deployment_version"]: dt.datetime.fromisoformat(r["bucket_start"].replace("Z", "+00:00"))
              for r in rows}
    assert sorted(starts) == [1, 2] and all(t.second % seconds == 0 and not t.microsecond for t in starts.values())
    assert [r["calls"] for r in rows] == [100, 100]
