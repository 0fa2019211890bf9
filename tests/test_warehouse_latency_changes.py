"""The latency page's queries on a real DuckDB: each deployment change with its latency
before and after (`latency-changes`), and GPU utilisation, GPU memory and KV-cache usage
over time by GPU profile (`gpu-metrics`)."""

from __future__ import annotations

import datetime as dt

import pytest

from nimtrail import config as config_mod
from tests.warehouse_data import NOW, ago, call, deployment, sample, write
from warehouse.access import Principal
from warehouse.operations import Context, execute
from warehouse.params import BadParameter
from warehouse.store import Store

SRE = Principal("sre", "viewer")
OLD, NEW = "vllm-bf16-tp1-pp1", "tensorrt_llm-h100-fp8-tp1-latency"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    store = Store(tmp_path_factory.mktemp("changes") / "audit.duckdb")
    write(store, "deployment", [
        deployment("prod/llama", 1, valid_from=ago(days=30), profile_name=OLD),
        deployment("prod/llama", 2, valid_from=ago(hours=2), profile_name=NEW,
                   nim_image="nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.4"),
        deployment("prod/mistral", 1, valid_from=ago(days=30), gpu_type="A100", profile_name="vllm-fp16-tp2",
                   model_id="mistral-7b"),
        deployment("prod/mistral", 2, valid_from=ago(days=10), gpu_type="A100", profile_name="vllm-fp16-tp2",
                   model_id="mistral-7b", purpose="code assistance"),
    ])
    write(store, "model_call",
          [call(f"old-{i}", started_at=ago(hours=3, minutes=i % 50), ttft_ms=float(i), e2e_ms=100.0)
           for i in range(1, 101)]
          + [call(f"new-{i}", started_at=ago(hours=1, minutes=i % 50), deployment_version=2,
                  ttft_ms=1.5 * i, e2e_ms=80.0) for i in range(1, 101)])
    minute = (NOW - dt.timedelta(minutes=30)).replace(second=0)

    def at(seconds: int) -> str:
        return (minute + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    dcgm = {"gpu": "0", "modelName": "NVIDIA H100 80GB HBM3"}
    write(store, "metric_sample", [
        sample("u0", at(0), "DCGM_FI_DEV_GPU_UTIL", None, value=40.0, labels={**dcgm, "gpu": "0"}),
        sample("u1", at(0), "DCGM_FI_DEV_GPU_UTIL", None, value=60.0, labels={**dcgm, "gpu": "1"}),
        sample("u2", at(70), "DCGM_FI_DEV_GPU_UTIL", None, value=90.0, labels=dcgm),
        sample("m0", at(10), "DCGM_FI_DEV_FB_USED", None, value=70000.0, labels=dcgm),
        sample("k0", at(20), "gpu_cache_usage_perc", None, value=0.25),
        sample("k1", at(30), "vllm:kv_cache_usage_perc", None, value=0.35),
        sample("k2", at(40), "nim_log:gpu_kv_cache_usage_ratio", None, value=0.99),  # not a scrape
        sample("k3", at(50), "vllm:kv_cache_usage_perc", None, value=float("nan")),
        sample("a0", at(5), "DCGM_FI_DEV_GPU_UTIL", None, value=10.0, deployment_id="prod/mistral",
               labels=dcgm),
    ])
    yield store, at
    store.close()


def _query(store: Store, name: str, **params: str) -> dict:
    ctx = Context(store, store.reader(), SRE, config_mod.load(None, env={}))
    return execute(ctx, "query", name, {k: [v] for k, v in params.items()})


def test_each_change_with_percentiles_before_and_after_newest_first(store):
    store, _ = store
    rows = _query(store, "latency-changes")["rows"]
    assert [(r["deployment_id"], r["from_version"], r["to_version"]) for r in rows] == [
        ("prod/llama", 1, 2), ("prod/mistral", 1, 2)]
    llama = rows[0]
    assert llama["before"]["profile_name"] == OLD and llama["after"]["profile_name"] == NEW
    assert llama["changed"] == ["nim_image", "profile_name"]
    assert (llama["calls_before"], llama["calls_after"]) == (100, 100)
    assert llama["changed_at"] == ago(hours=2)
    # quantile_cont over 1..100 and over 1.5..150: +50% at every percentile
    assert (llama["ttft_ms_p50_before"], llama["ttft_ms_p50_after"]) == (50.5, 75.75)
    assert llama["ttft_ms_p50_change_pct"] == llama["ttft_ms_p99_change_pct"] == 50.0
    assert llama["e2e_ms_p95_change_pct"] == -20.0
    # a change with no calls on either side: listed, with no percentiles to compare
    mistral = rows[1]
    assert mistral["changed"] == [] and mistral["calls_before"] == 0
    assert mistral["ttft_ms_p50_before"] is None and mistral["ttft_ms_p50_change_pct"] is None


def test_changes_within_the_range_and_filters(store):
    store, _ = store
    recent = _query(store, "latency-changes", since=ago(days=1))["rows"]
    assert [r["deployment_id"] for r in recent] == ["prod/llama"]
    assert recent[0]["calls_before"] == 100
    short = _query(store, "latency-changes", since=ago(minutes=150))["rows"][0]
    assert short["calls_before"] == 0 and short["calls_after"] == 100
    assert _query(store, "latency-changes", profile_name=OLD)["rows"][0]["to_version"] == 2
    assert [r["deployment_id"] for r in _query(store, "latency-changes", gpu_type="A100")["rows"]] == [
        "prod/mistral"]
    assert _query(store, "latency-changes", deployment_id="prod/none")["rows"] == []
    with pytest.raises(BadParameter):
        _query(store, "latency-changes", since=ago(), until=ago(days=1))


def test_gpu_metrics_over_time_by_gpu_profile(store):
    store, at = store
    found = _query(store, "gpu-metrics", by="profile", bucket="1m", since=ago(hours=1))
    rows = {(r["profile_name"], r["bucket_start"]): r for r in found["rows"]}
    # samples are read against the version in force when taken: the new profile
    first = rows[(NEW, at(0))]
    assert first["gpu_type"] == "H100"
    assert first["gpu_util_pct"] == 50.0  # the mean over both GPUs
    assert first["gpu_memory_used_mib"] == 70000.0
    assert first["kv_cache_usage_pct"] == 30.0  # NIM 1.x and vLLM names; log-derived and NaN left out
    assert rows[(NEW, at(60))]["gpu_util_pct"] == 90.0
    assert rows[(NEW, at(60))]["kv_cache_usage_pct"] is None
    assert rows[("vllm-fp16-tp2", at(0))]["gpu_util_pct"] == 10.0


def test_gpu_metrics_by_deployment_version_whole_window_and_filters(store):
    store, _ = store
    rows = _query(store, "gpu-metrics", by="deployment", bucket="none")["rows"]
    assert [(r["deployment_id"], r["deployment_version"]) for r in rows] == [("prod/llama", 2), ("prod/mistral", 2)]
    assert rows[0]["gpu_util_pct"] == round((40 + 60 + 90) / 3, 3)
    only = _query(store, "gpu-metrics", bucket="none", gpu_type="A100")["rows"]
    assert [r["gpu_util_pct"] for r in only] == [10.0]
    assert _query(store, "gpu-metrics", since=ago(minutes=5))["rows"] == []
