"""Alerts on a real DuckDB store and a real HTTP receiver: findings made by the processor's
own recipes are committed, the alert loop turns them into one alert per finding group,
keeps what a receiver did not take, and neither repeats nor loses one across a restart."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from nimtrail import config as config_mod
from cli.broker import free_port
from nimtrail.errors import ConfigError
from nimtrail.ops import StageMetrics
from processors import policy
from tests.alert_receiver import HOOK_PATH, AlertReceiver
from tests.warehouse_data import action, ago, call, deployment, write
from warehouse import shards
from warehouse.alerts import Alerter, Backoff
from warehouse.api import QueryApi
from warehouse.queries.actions import SEVERITY_NAMES
from warehouse.store import Store

GOVERNED = deployment(tool_calling_allowed=True, destructive_tools=["delete_record"])
APP = "https://nimtrail.example.com/app"


def _config(tmp: Path, port: int, warehouse: dict | None = None, **alerts: object) -> config_mod.Config:
    token = tmp / "alert-token"
    token.write_text("s3cret\n")
    doc = {"data_dir": str(tmp / "data"), "warehouse": warehouse or {},
           "alerts": {"alertmanager_url": f"http://127.0.0.1:{port}",
                      "webhook_url": f"http://127.0.0.1:{port}{HOOK_PATH}",
                      "alertmanager_token_file": str(token), "app_url": APP, **alerts}}
    path = tmp / "nimtrail.yaml"
    path.write_text(yaml.safe_dump(doc))
    return config_mod.load(path, env={})


def _incident(store: Store, first: int, count: int) -> None:
    """`count` destructive tools run under one auto-approving policy (one group of
    ungated_action findings), a call from a deployment nobody registered (high) and a tool
    run no call asked for (medium)."""
    calls = [call(f"c{i}") for i in range(first, first + count)]
    actions = [action(f"a{i}", f"c{i}", gate="policy", policy_id="auto-approve")
               for i in range(first, first + count)]
    write(store, "model_call", calls)
    write(store, "tool_action", actions)
    found = [f for a, c in zip(actions, calls) for f in policy.action_findings(a, c, GOVERNED, [])]
    found += policy.call_findings(call(f"u{first}", deployment_id=None), None)
    found += policy.action_findings(action(f"orphan{first}", f"none{first}"), None, None, [])
    write(store, "finding", [{**f, "version": 1, "observed_at": ago()} for f in found])


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "audit.duckdb")
    write(store, "deployment", [GOVERNED])
    yield store
    store.close()


def test_one_alert_per_finding_group_with_labels_and_the_link_back(tmp_path, store):
    receiver = AlertReceiver(free_port()).start()
    metrics = StageMetrics("warehouse")
    alerter = Alerter(_config(tmp_path, receiver.port), store, metrics)
    try:
        assert alerter.open()
        _incident(store, 0, 3)
        alerter.run_once()
        alerts = receiver.alerts()
        assert sorted((a["labels"] for a in alerts), key=lambda labels: labels["alertname"]) == [
            {"alertname": "nimtrail_ungated_action", "severity": "critical", "deployment": "prod/llama",
             "tool": "delete_record", "policy": "auto-approve"},
            {"alertname": "nimtrail_unknown_deployment", "severity": "high",
             "deployment": "model meta/llama-3.1-8b-instruct"},
        ]  # and none for the unattributed_action: medium is below min_severity (high by default)
        ungated = next(a for a in alerts if a["labels"]["alertname"] == "nimtrail_ungated_action")
        subject = ungated["annotations"]["subject_ids"].split(", ")[0]
        assert subject in {"a0", "a1", "a2"}
        assert ungated["generatorURL"] == ungated["annotations"]["trace_url"] == f"{APP}/trace-back?id={subject}"
        assert "ungated_action" in ungated["annotations"]["summary"]
        assert "without a human approval" in ungated["annotations"]["description"]
        assert ungated["startsAt"].endswith("Z") and "endsAt" not in ungated

        hooks = receiver.hooks()
        assert len(hooks) == 2
        hook = next(h for h in hooks if h["kind"] == "ungated_action")
        assert (hook["deployment"], hook["tool"], hook["policy"], hook["severity"]) == \
            ("prod/llama", "delete_record", "auto-approve", "critical")
        assert hook["latest"]["detail"]["policy_id"] == "auto-approve"
        assert hook["trace_url"] == f"{APP}/trace-back?id={hook['latest']['subject_ids'][0]}"
        bearer = [h.get("Authorization") for h in receiver.headers()]
        assert bearer.count("Bearer s3cret") == 1 and bearer.count(None) == 2  # only Alertmanager's

        # More of both groups: nothing new is sent.
        _incident(store, 3, 2)
        alerter.run_once()
        assert len(receiver.alerts()) == 2 and len(receiver.hooks()) == 2
        text = metrics.exposition().decode()
        assert 'nimtrail_warehouse_alerts_delivered_alerts_total{receiver="alertmanager"} 2.0' in text
        assert 'nimtrail_warehouse_alerts_pending_alerts{receiver="webhook"} 0.0' in text
        assert f"nimtrail_warehouse_alerts_cursor_seq {float(store.ledger.head.seq)}" in text
    finally:
        alerter.close()
        receiver.stop()


def test_a_receiver_down_keeps_alerts_until_it_returns_and_a_restart_repeats_none(tmp_path, store):
    receiver = AlertReceiver(free_port())  # not listening yet: its port refuses
    config = _config(tmp_path, receiver.port, webhook_url="")
    metrics = StageMetrics("warehouse")
    first = Alerter(config, store, metrics)
    try:
        assert first.open()
        _incident(store, 0, 2)
        first.run_once()
        assert receiver.alerts() == []
        text = metrics.exposition().decode()
        assert 'nimtrail_warehouse_alerts_pending_alerts{receiver="alertmanager"} 2.0' in text
        assert ('nimtrail_warehouse_alert_delivery_failures_total{reason="unreachable",'
                'receiver="alertmanager"} 1.0') in text
    finally:
        first.close()  # the warehouse stops with both alerts undelivered

    receiver.start()
    try:
        for restart in range(2):
            alerter = Alerter(config, store, StageMetrics("warehouse"))
            try:
                assert alerter.open()
                _incident(store, 10 + 10 * restart, 2)  # more of the same groups meanwhile
                alerter.run_once()
            finally:
                alerter.close()
        assert sorted(a["labels"]["alertname"] for a in receiver.alerts()) == \
            ["nimtrail_ungated_action", "nimtrail_unknown_deployment"]
        assert len(receiver.posts) == 1
    finally:
        receiver.stop()


def _two_free_ports(apart: int) -> int:
    """A port free with the one `apart` above it (the front's and shard 1's on one host)."""
    while True:
        port = free_port()
        if port + apart < 65536 and not _listening(port + apart):
            return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ungated(store: Store, call_id: str, deployment_id: str) -> None:
    """A destructive tool run under an auto-approving policy on a deployment of its own:
    a finding group of its own."""
    governed = deployment(deployment_id=deployment_id, tool_calling_allowed=True, destructive_tools=["delete_record"])
    made, ran = call(call_id, deployment_id=deployment_id), action(f"a-{call_id}", call_id, policy_id="auto-approve")
    write(store, "deployment", [governed])
    write(store, "model_call", [made])
    write(store, "tool_action", [ran])
    write(store, "finding", [{**f, "version": 1, "observed_at": ago()}
                             for f in policy.action_findings(ran, made, governed, [])])


def test_over_shards_the_front_alerts_each_group_once_and_asks_a_shard_away_again(tmp_path):
    """Both shards hold findings of the same groups: the front alone alerts, once per group,
    and for a group only the other shard holds. A shard whose API is down is asked again
    next turn, from where it was."""
    receiver = AlertReceiver(free_port()).start()
    api = _two_free_ports(shards.port_offset(1))
    base = _config(tmp_path, receiver.port, warehouse={"shards": 2, "api": f"127.0.0.1:{api}"}, webhook_url="")
    front_config, shard_config = shards.for_shard(base, 0), shards.for_shard(base, 1)
    shards.token(base, create=True)
    stores = [Store(tmp_path / f"shard{i}.duckdb") for i in range(2)]
    for store in stores:
        write(store, "deployment", [GOVERNED])

    def serve_shard() -> QueryApi:
        return QueryApi(shard_config, stores[1], StageMetrics("warehouse"), lambda: True,
                        host="127.0.0.1", port=shard_config.warehouse.api.port).start()

    def deployments_alerted() -> list[str]:
        return sorted(a["labels"]["deployment"] for a in receiver.alerts())

    shard_api = None
    front = Alerter(front_config, stores[0], StageMetrics("warehouse"))
    try:
        assert not Alerter(shard_config, stores[1], StageMetrics("warehouse")).open()  # the front alerts for it
        _ungated(stores[1], "early", "prod/early")  # before its ledger was first looked at: never alerts
        shard_api = serve_shard()
        assert front.open()
        front.run_once()
        _incident(stores[0], 0, 2)
        _incident(stores[1], 10, 2)  # the same groups, in the other shard
        _ungated(stores[1], "s1", "prod/shard1")  # a group only shard 1 holds
        front.run_once()
        assert deployments_alerted() == ["model meta/llama-3.1-8b-instruct", "prod/llama", "prod/shard1"]

        shard_api.shutdown()
        shard_api = None
        _ungated(stores[1], "o1", "prod/other")
        front.run_once()  # shard 1 is away: nothing of it yet, and the turn does not fail
        assert len(receiver.alerts()) == 3
        shard_api = serve_shard()
        front.run_once()
        assert receiver.alerts()[3]["labels"]["deployment"] == "prod/other"
        assert len(receiver.alerts()) == 4 and "prod/early" not in deployments_alerted()
    finally:
        front.close()
        if shard_api is not None:
            shard_api.shutdown()
        for store in stores:
            store.close()
        receiver.stop()


def test_findings_committed_before_alerts_were_configured_do_not_alert(tmp_path, store):
    _incident(store, 0, 1)
    receiver = AlertReceiver(free_port()).start()
    alerter = Alerter(_config(tmp_path, receiver.port, min_severity="low"), store, StageMetrics("warehouse"))
    try:
        assert alerter.open()
        alerter.run_once()
        assert receiver.posts == []
    finally:
        alerter.close()
        receiver.stop()


def test_without_a_receiver_nothing_runs_and_the_store_is_untouched(tmp_path, store):
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp_path)})
    assert not config.alerts.enabled
    alerter = Alerter(config, store, StageMetrics("warehouse")).start()
    alerter.close()
    assert store.reader().execute("SELECT count(*) FROM alert_cursors").fetchone() == (0,)


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    backoff = Backoff(cap=5.0)
    delays = [backoff.failed() for _ in range(6)]
    bounds = [1, 2, 4, 5, 5, 5]
    assert all(0.8 * b <= d <= b for d, b in zip(delays, bounds)), delays
    assert not backoff.ready()
    backoff.succeeded()
    assert backoff.ready() and backoff.failures == 0


def test_alerts_config_is_validated_and_named_in_errors(tmp_path):
    def load(alerts: dict, env: dict | None = None) -> config_mod.Config:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"alerts": alerts}))
        return config_mod.load(path, env=env or {})

    config = load({"alertmanager_url": "http://am:9093", "min_severity": "critical", "timeout": "2s"})
    assert config.alerts.enabled and config.alerts.timeout == 2.0
    env = load({}, {"NIMTRAIL_ALERTS__WEBHOOK_URL": "https://hooks.example.com/x"})
    assert env.alerts.webhook_url == "https://hooks.example.com/x"
    for bad, message in [({"min_severity": "urgent"}, "alerts.min_severity: expected one of critical"),
                         ({"webhook_url": "hooks.example.com"}, "alerts.webhook_url: expected an http"),
                         ({"app_url": "ftp://x"}, "alerts.app_url: expected an http"),
                         ({"timeout": True}, "alerts.timeout: expected a duration"),
                         ({"timeout": "0s"}, "alerts.timeout: expected a duration between"),
                         ({"interval": "10s", "retry_max": "5s"}, "alerts.retry_max: must not be shorter"),
                         ({"alertmanager_url": ["http://am"]}, "alerts.alertmanager_url: expected a string"),
                         ({"receivers": []}, "alerts.receivers: unknown key")]:
        with pytest.raises(ConfigError, match=message):
            load(bad)
    # the names the config accepts are the ones the warehouse ranks
    assert set(config_mod.SEVERITIES) == set(SEVERITY_NAMES.values())
