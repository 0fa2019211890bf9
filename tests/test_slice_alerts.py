"""Alerts through the running pipeline (OTel SDK → collector → Kafka → processor →
warehouse, stages as processes with the config a user writes): an automatically approved
destructive tool raises an ungated_action finding, and a real HTTP server shaped like
Alertmanager (and a webhook beside it) receives exactly one alert per finding group —
after being down while the warehouse went on ingesting, and not again after the warehouse
restarts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cli.broker import free_port
from tests.alert_receiver import HOOK_PATH, AlertReceiver
from tests.harness import Env, scrape, wait_for
from tests.otel_agent import send_agent_trace
# The corpus's governance records: delete_record is destructive on the llama deployment the
# agent trace calls, whose tool calling is not allowed.
from tests.test_processors_kafka import register_deployments

pytestmark = pytest.mark.integration
ALERTING = ("critical", "high")  # alerts.min_severity: high, the default
FAILED = 'nimtrail_warehouse_alert_delivery_failures_total{reason="unreachable",receiver="alertmanager"}'


def _groups(env: Env) -> dict[tuple, int]:
    """Finding groups at or above the alerting severity, as `nimtrail findings` shows them:
    (kind, deployment, tool, policy) -> count."""
    rows = json.loads(env.cli("findings", "--json", "--limit", "100").stdout)["rows"]
    return {(g["kind"], g["deployment"], g["tool"], g["policy"]): g["count"]
            for g in rows if g["severity"] in ALERTING}


def _alerted(receiver: AlertReceiver) -> Counter:
    return Counter((a["labels"]["alertname"].removeprefix("nimtrail_"), a["labels"].get("deployment"),
                    a["labels"].get("tool"), a["labels"].get("policy")) for a in receiver.alerts())


def _hooked(receiver: AlertReceiver) -> Counter:
    return Counter((h["kind"], h["deployment"], h["tool"], h["policy"]) for h in receiver.hooks())


def _all_alerted_once(env: Env, receiver: AlertReceiver):
    """Wait until every group has reached both receivers; the groups."""
    def done():
        groups = _groups(env)
        return groups if set(_alerted(receiver)) == set(_hooked(receiver)) == set(groups) else None
    groups = wait_for(done, timeout=90, interval=0.5, what="an alert for every finding group")
    assert set(_alerted(receiver).values()) == set(_hooked(receiver).values()) == {1}, receiver.posts
    return groups


def test_one_alert_per_finding_group_through_an_outage_and_a_restart(tmp_path: Path, kafka_bootstrap: str):
    receiver = AlertReceiver(free_port())  # down at first: its port refuses
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s"},
              alerts={"alertmanager_url": receiver.url, "webhook_url": receiver.url + HOOK_PATH,
                      "app_url": "https://nimtrail.example.com", "interval": "200ms", "retry_max": "1s"})
    try:
        register_deployments(env)
        warehouse = env.start("warehouse")
        for stage in ("processor", "collector"):
            env.start(stage)
        for stage in ("warehouse", "processor", "collector"):
            env.wait_ready(stage)

        # Two runs of the same destructive tool: two findings of each kind, one group each.
        sent = [send_agent_trace(env.otlp_http) for _ in range(2)]
        ungated = ("ungated_action", "prod/llama-3-1-8b", "delete_record", None)
        wait_for(lambda: _groups(env).get(ungated) == 2, timeout=90, interval=0.5,
                 what="both ungated_action findings in the warehouse while the receiver is down")
        wait_for(lambda: scrape(f"{env.api}/metrics").get(FAILED, 0) >= 1, timeout=30,
                 what="the failed deliveries in the warehouse's metrics")
        assert receiver.posts == []

        receiver.start()
        groups = _all_alerted_once(env, receiver)
        assert ungated in groups and len(groups) >= 2, groups
        alert = next(a for a in receiver.alerts() if a["labels"]["alertname"] == "nimtrail_ungated_action")
        assert alert["labels"]["severity"] == "critical" and "policy" not in alert["labels"]
        assert alert["generatorURL"].startswith("https://nimtrail.example.com/trace-back?id=")
        assert any(s["call_id"] in alert["annotations"]["subject_ids"] for s in sent)
        metrics = scrape(f"{env.api}/metrics")
        assert metrics['nimtrail_warehouse_alerts_pending_alerts{receiver="alertmanager"}'] == 0

        # The warehouse restarts; the same groups happen again, then a group never seen.
        warehouse.terminate()
        assert warehouse.wait(timeout=60) == 0
        env.start("warehouse")
        env.wait_ready("warehouse")
        send_agent_trace(env.otlp_http)
        wait_for(lambda: _groups(env).get(ungated) == 3, timeout=90, interval=0.5,
                 what="the third ungated_action finding")
        send_agent_trace(env.otlp_http, tool="search_kb")  # tool calling is not allowed there
        new = ("purpose_violation", "prod/llama-3-1-8b", "search_kb", None)
        wait_for(lambda: new in _alerted(receiver), timeout=90, interval=0.5, what="the new group's alert")
        groups = _all_alerted_once(env, receiver)
        assert groups[ungated] == 3
    finally:
        env.stop_all()
        receiver.stop()
