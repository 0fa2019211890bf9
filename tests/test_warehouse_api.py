"""The query API over real HTTP on a real DuckDB file: tokens and roles, content hidden
from viewers, parameters checked, and every read in the (ledgered) access log."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from nimtrail import config as config_mod, records
from nimtrail.ops import StageMetrics
from tests.warehouse_data import action, call, deployment, write
from warehouse.access import Gate, Refused
from warehouse.api import QueryApi
from warehouse.store import Store

TOKENS = {"viewer-token": ("viewer", "grafana"), "responder-token": ("responder", "oncall"),
          "compliance-token": ("compliance", "audit-team")}


def _tokens_file(path: Path) -> Path:
    # the responder's token is listed by its SHA-256 only, as an operator would store it
    entries = {("sha256:" + hashlib.sha256(t.encode()).hexdigest() if role == "responder" else t):
               {"role": role, "name": name} for t, (role, name) in TOKENS.items()}
    path.write_text(orjson.dumps({"tokens": entries}).decode())
    return path


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    """One warehouse API for the module (tests only add to it: reads, a hold, an export)."""
    tmp_path = tmp_path_factory.mktemp("api")
    data = tmp_path / "data"
    config = config_mod.load(None, env={
        "NIMTRAIL_DATA_DIR": str(data),
        "NIMTRAIL_WAREHOUSE__TOKENS_FILE": str(_tokens_file(tmp_path / "tokens.json"))})
    store = Store(config.warehouse_path)
    write(store, "deployment", [deployment()])
    write(store, "model_call", [call(f"c{i}", caller="alice" if i % 2 else "bob") for i in range(6)])
    write(store, "tool_action", [action("a1", "c1")])
    write(store, "finding", [records.new("finding", finding_id="f1", kind="ungated_action",
                                         severity="high", subject_ids=["a1", "c1"],
                                         detected_at="2025-03-01T12:00:00Z", detail={"gate": None},
                                         version=1)])
    server = QueryApi(config, store, StageMetrics("warehouse"), lambda: True,
                      host="127.0.0.1", port=0).start()
    yield f"http://127.0.0.1:{server.port}", store, config
    server.shutdown()
    store.close()


def _get(base: str, path: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def test_tokens_and_roles_decide_who_reads_what(api):
    base, _store, _config = api
    assert _get(base, "/v1/query/calls")[0] == 401
    status, doc = _get(base, "/v1/query/calls", "not-a-token")
    assert status == 401 and doc["message"] == "unknown token"
    status, doc = _get(base, "/v1/query/access-log", "viewer-token")
    assert status == 403 and "compliance" in doc["message"] and "grafana" in doc["message"]
    assert _get(base, "/v1/query/verify", "responder-token")[0] == 403
    assert _get(base, "/v1/action/retention-apply", "viewer-token", {"dry_run": True})[0] == 403
    assert _get(base, "/v1/query/calls", "viewer-token")[0] == 200
    assert _get(base, "/v1/query/access-log", "compliance-token")[0] == 200


def test_content_is_hidden_from_viewers_and_shown_to_responders(api):
    base, _store, _config = api
    _, seen_by_viewer = _get(base, "/v1/query/calls?call_id=c1", "viewer-token")
    row = seen_by_viewer["rows"][0]
    assert seen_by_viewer["content_hidden"] is True
    assert row["prompt_text"] is None and row["response_text"] is None
    assert row["prompt_sha256"] == "a" * 64 and row["caller"] == "alice"  # metadata stays
    _, traced = _get(base, "/v1/query/trace-back?action_id=a1", "viewer-token")
    assert traced["actions"][0]["arguments"] is None and traced["call"]["prompt_text"] is None
    assert traced["actions"][0]["arguments_sha256"] == "c" * 64

    _, seen_by_responder = _get(base, "/v1/query/trace-back?action_id=a1", "responder-token")
    assert "content_hidden" not in seen_by_responder
    assert seen_by_responder["call"]["prompt_text"] == "please delete order 42"
    assert seen_by_responder["actions"][0]["arguments"] == '{"order": 42}'


@pytest.mark.parametrize("path, body, parameter", [
    ("/v1/query/calls?limit=abc", None, "limit"),
    ("/v1/query/calls?limit=5000", None, "limit"),
    ("/v1/query/calls?since=yesterday", None, "since"),
    ("/v1/query/calls?since=2025-02-01&until=2025-01-01", None, "until"),
    ("/v1/query/calls?sql=select", None, "sql"),
    ("/v1/query/latency?by=gpu", None, "by"),
    ("/v1/query/latency?bucket=2h", None, "bucket"),
    ("/v1/query/trace-back", None, "action_id"),
    ("/v1/query/retention-report?to=2025-01-01", None, "from"),
    ("/v1/export/archive?day=2025-13-01&table=model_calls", None, "day"),
    ("/v1/action/hold-add", {"caller": "alice"}, "reason"),
    ("/v1/action/retention-apply", {"dry_run": "maybe"}, "dry_run"),
])
def test_bad_parameters_are_refused_naming_the_parameter(api, path, body, parameter):
    base, _store, _config = api
    status, doc = _get(base, path, "compliance-token", body)
    assert status == 400, doc
    assert doc["parameter"] == parameter and f"'{parameter}'" in doc["message"]


def test_every_read_and_refusal_is_in_the_ledgered_access_log(api):
    base, _store, _config = api
    _get(base, "/v1/query/calls?caller=alice&limit=2", "responder-token")
    _get(base, "/v1/query/calls")  # no token
    _get(base, "/v1/query/access-log", "viewer-token")  # wrong role
    _, log = _get(base, "/v1/query/access-log?limit=10", "compliance-token")
    entries = log["rows"]
    read = next(e for e in entries if e["principal"] == "oncall")
    assert read["operation"] == "query/calls" and read["role"] == "responder"
    assert read["params"] == {"caller": "alice", "limit": "2"}
    assert read["rows"] == 2 and read["status"] == 200 and read["client_address"] == "127.0.0.1"
    assert any(e["status"] == 401 and e["principal"] == "anonymous" and e["role"] is None for e in entries)
    assert any(e["status"] == 403 and e["principal"] == "grafana" for e in entries)
    # the access log is part of the ledger: the chain over it still verifies
    status, verified = _get(base, "/v1/query/verify", "compliance-token")
    assert status == 200 and verified["ok"], verified["problems"]
    assert verified["rows_checked"]["access_log"] >= 4


def test_holds_and_exports_through_the_api(api):
    base, _store, _config = api
    status, added = _get(base, "/v1/action/hold-add", "compliance-token",
                         {"caller": "alice", "reason": "case 7"})
    assert status == 200 and added["hold"]["created_by"] == "audit-team"
    request = urllib.request.Request(base + "/v1/export/retention-report?from=2000-01-01&to=2100-01-01"
                                     "&format=csv", headers={"Authorization": "Bearer compliance-token"})
    with urllib.request.urlopen(request, timeout=30) as response:
        data, sha = response.read(), response.headers["X-Nimtrail-Sha256"]
    assert hashlib.sha256(data).hexdigest() == sha
    assert b"case 7" in data.replace(b'""', b'"')
    _, exported = _get(base, "/v1/query/access-log?operation=export/retention-report", "compliance-token")
    assert exported["rows"][0]["principal"] == "audit-team"


def test_findings_and_deployments_for_viewers(api):
    base, _store, _config = api
    _, found = _get(base, "/v1/query/findings?kind=ungated_action&since=2025-03-01&group=false", "viewer-token")
    assert [(f["finding_id"], f["subject_ids"], f["detail"], f["deployment"]) for f in found["rows"]] == [
        ("f1", ["a1", "c1"], {"gate": None}, "prod/llama")]
    _, grouped = _get(base, "/v1/query/findings?kind=ungated_action", "viewer-token")
    assert [(g["deployment"], g["tool"], g["count"], g["latest"]["finding_id"]) for g in grouped["rows"]] == [
        ("prod/llama", "delete_record", 1, "f1")]
    assert _get(base, "/v1/query/findings?kind=drift", "viewer-token")[1]["rows"] == []
    _, traced = _get(base, "/v1/query/trace-back?call_id=c1", "viewer-token")
    assert [f["finding_id"] for f in traced["findings"]] == ["f1"]
    _, deployed = _get(base, "/v1/query/deployments", "viewer-token")
    assert [(d["deployment_id"], d["version"], d["calls"]) for d in deployed["rows"]] == [
        ("prod/llama", 1, 6)]


def test_without_tokens_the_api_only_answers_loopback():
    gate = Gate("")
    assert gate.authenticate(None, "127.0.0.1").name == "anonymous@loopback"
    assert gate.authenticate(None, "::1").role == "admin"
    with pytest.raises(Refused) as refused:
        gate.authenticate(None, "10.0.0.7")
    assert refused.value.status == 403
