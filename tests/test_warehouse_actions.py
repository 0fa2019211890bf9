"""The `actions` and `facets` queries over real HTTP on a real DuckDB file: finding an action
by tool, target, caller or time, the riskiest first, and the values to filter by."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import orjson
import pytest

from nimtrail import config as config_mod, records
from nimtrail.ops import StageMetrics
from tests.warehouse_data import action, ago, call, deployment, write
from warehouse.api import QueryApi
from warehouse.store import Store


def _finding(finding_id: str, kind: str, severity: str, subjects: list[str]) -> dict:
    return records.new("finding", finding_id=finding_id, kind=kind, severity=severity,
                       subject_ids=subjects, detected_at=ago(), detail={}, version=1)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("actions") / "data"
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(data)})
    store = Store(config.warehouse_path)
    write(store, "deployment", [deployment(destructive_tools=["delete_record", "refund_order"]),
                                deployment("prod/mistral", model_id="mistral-7b", gpu_type="A100",
                                           profile_name="vllm-fp16-tp2-pp1")])
    write(store, "model_call", [
        call("c-old", days=3, caller="alice", client_service="support-agent"),
        call("c-refund", days=2 / 24, caller="bob", client_service="support-agent"),
        call("c-lookup", days=1 / 24, caller="bob", client_service="support-agent",
             deployment_id="prod/mistral", model="mistral-7b"),
        call("c-incident", days=1, caller="oncall-bot", client_service="ops-agent"),
    ])
    write(store, "tool_action", [
        action("a-old", "c-old", days=3, tool_name="delete_record", target="prod-db/orders/7"),
        action("a-refund", "c-refund", days=2 / 24, tool_name="refund_order", target="payments/refunds/9"),
        action("a-lookup", "c-lookup", days=1 / 24, tool_name="lookup_order", target="prod-db/orders/42"),
        action("a-incident", "c-incident", days=1, tool_name="delete_record",
               target="prod-db/customers", gate="policy", gate_decision="auto_approved"),
        {**action("a-orphan", "c-none", days=3 / 24, tool_name="lookup_order", target="prod-db/orders/1"),
         "call_id": None},
    ])
    # The incident's call broke its deployment's purpose; its action ran ungated.
    write(store, "finding", [_finding("f-purpose", "purpose_violation", "high", ["c-incident", "prod/llama"]),
                             _finding("f-ungated", "ungated_action", "medium", ["a-incident"]),
                             _finding("f-orphan", "unattributed_action", "low", ["a-orphan"])])
    server = QueryApi(config, store, StageMetrics("warehouse"), lambda: True,
                      host="127.0.0.1", port=0).start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    store.close()


def _get(base: str, name: str, **params: str) -> tuple[int, dict]:
    url = f"{base}/v1/query/{name}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def _ids(base: str, **params: str) -> list[str]:
    status, doc = _get(base, "actions", **params)
    assert status == 200, doc
    return [r["action_id"] for r in doc["rows"]]


def test_risk_order_puts_the_worst_finding_first_then_destructive_tools(api):
    assert _ids(api) == ["a-lookup", "a-refund", "a-orphan", "a-incident", "a-old"]  # newest first
    assert _ids(api, order="risk") == ["a-incident", "a-orphan", "a-refund", "a-old", "a-lookup"]
    _, doc = _get(api, "actions", order="risk", limit="1")
    top = doc["rows"][0]
    assert top["finding_kinds"] == ["purpose_violation", "ungated_action"]  # the call's and its own
    assert top["findings"] == 2 and top["finding_severity"] == "high" and top["destructive"] is True
    assert (top["caller"], top["client_service"], top["deployment_id"]) == ("oncall-bot", "ops-agent", "prod/llama")
    assert doc["next_offset"] == 1
    assert _ids(api, order="risk", flagged="true") == ["a-incident", "a-orphan", "a-refund", "a-old"]


@pytest.mark.parametrize("params", [{"order": "risk"}, {"order": "risk", "caller": "bob"}, {"order": "time"},
                                    {"order": "risk", "flagged": "true"}])
def test_pages_put_together_are_the_whole_list(api, params):
    """Small pages are chosen among the flagged actions first, or from the actions before
    their calls are joined: page after page must still give the whole order, calls included."""
    _, whole = _get(api, "actions", **params)
    for limit in (1, 2, 3):
        rows, offset = [], 0
        while offset is not None:
            _, doc = _get(api, "actions", limit=str(limit), offset=str(offset), **params)
            rows += doc["rows"]
            offset = doc["next_offset"]
        assert rows == whole["rows"]


@pytest.mark.parametrize("params, expected", [
    ({"tool_name": "delete_record"}, ["a-incident", "a-old"]),
    ({"target": "prod-db/orders"}, ["a-lookup", "a-orphan", "a-old"]),  # a prefix
    ({"target": "prod-db/customers"}, ["a-incident"]),
    ({"caller": "bob"}, ["a-lookup", "a-refund"]),
    ({"client_service": "ops-agent"}, ["a-incident"]),
    ({"deployment_id": "prod/mistral"}, ["a-lookup"]),
    ({"tool_call_id": "tc-c-refund"}, ["a-refund"]),
    ({"since": ago(days=2), "until": ago(hours=2.5)}, ["a-orphan", "a-incident"]),
    ({"gate": "policy", "caller": "oncall-bot"}, ["a-incident"]),
    ({"finding_kind": "purpose_violation"}, ["a-incident"]),  # the call's finding reaches its action
    ({"finding_kind": "unattributed_action"}, ["a-orphan"]),
    ({"target": "x' OR '1'='1"}, []),  # a bound value, never SQL
])
def test_filters(api, params, expected):
    assert _ids(api, **params) == expected


@pytest.mark.parametrize("params, parameter", [
    ({"order": "worst"}, "order"),
    ({"flagged": "maybe"}, "flagged"),
    ({"since": "last week"}, "since"),
    ({"severity": "high"}, "severity"),
])
def test_bad_parameters_name_themselves(api, params, parameter):
    status, doc = _get(api, "actions", **params)
    assert status == 400 and doc["parameter"] == parameter


def test_facets_offer_the_values_to_filter_by(api):
    status, doc = _get(api, "facets")
    assert status == 200
    assert doc["callers"] == ["alice", "bob", "oncall-bot"]
    assert doc["client_services"] == ["ops-agent", "support-agent"]
    assert doc["deployments"] == ["prod/llama", "prod/mistral"]
    assert doc["tools"] == ["delete_record", "lookup_order", "refund_order"]
    assert doc["gpu_types"] == ["A100", "H100"]
    assert doc["findings"] == [{"kind": "purpose_violation", "severity": "high", "count": 1},
                               {"kind": "ungated_action", "severity": "medium", "count": 1},
                               {"kind": "unattributed_action", "severity": "low", "count": 1}]
    _, recent = _get(api, "facets", since=ago(hours=2.5))
    assert recent["callers"] == ["bob"] and recent["tools"] == ["lookup_order", "refund_order"]
