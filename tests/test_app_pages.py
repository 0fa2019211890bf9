"""Every page of the app (Streamlit's AppTest) against a real query API over a warehouse
seeded by one simulator run: no exception, the simulator's incident is there, filters
change what is shown, errors and empty stores give messages that say what to do."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from nimtrail import api_client, config as config_mod
from nimtrail.deployments import Identity, unknown_deployment
from nimtrail.ops import StageMetrics
from tests import app_world, warehouse_data
from tests.harness import REPO
from warehouse.api import QueryApi
from warehouse.store import Store

MAIN = str(REPO / "app" / "main.py")
PAGES = {"calls": "pages/calls.py", "latency": "pages/latency.py", "usage": "pages/usage.py",
         "deployments": "pages/deployments.py", "compliance": "pages/compliance.py",
         "findings": "pages/findings.py"}
# Pages that open on an id (from a link or the URL) and read nothing without one.
TRACE_PAGE, SESSION_PAGE = "pages/trace.py", "pages/session.py"


def _api(config, store) -> tuple[QueryApi, str]:
    server = QueryApi(config, store, StageMetrics("warehouse"), lambda: True, host="127.0.0.1", port=0).start()
    return server, f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """One simulator run in a warehouse, served by a real query API: open to loopback (the
    single-machine default), and a second one over the same store that requires tokens."""
    tmp = tmp_path_factory.mktemp("app")
    tokens = tmp / "tokens.json"
    tokens.write_text(orjson.dumps({"tokens": {"viewer-token": {"role": "viewer", "name": "grafana"}}}).decode())
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp / "data")})
    guarded = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp / "data"),
                                         "NIMTRAIL_WAREHOUSE__TOKENS_FILE": str(tokens)})
    store = Store(config.warehouse_path)
    incident = app_world.seed(store, tmp / "sim")
    # A NIM nobody registered shows up in telemetry: the finding the deployments page lists.
    stray = unknown_deployment(Identity(namespace="dev", workload="llama-canary", service_name="llama-canary"),
                               app_world.registered(tmp / "sim"), incident["happened_at"])
    store.write(store.frames({"finding": [stray]}), [])
    found = store.reader().execute("SELECT kind FROM findings WHERE list_contains(subject_ids, ?)",
                                   [incident["action_id"]]).fetchall()
    open_api, open_url = _api(config, store)
    guarded_api, guarded_url = _api(guarded, store)
    yield {"url": open_url, "guarded_url": guarded_url, "incident": incident, "stray": stray, "tmp": tmp,
           "incident_findings": sorted(k for (k,) in found),
           "finding_counts": store.reader().execute("SELECT kind, count(*) FROM findings GROUP BY kind").fetchall()}
    open_api.shutdown()
    guarded_api.shutdown()
    store.close()


@pytest.fixture
def app(world, monkeypatch):
    """An AppTest of the whole app, reading from the world's open API."""
    monkeypatch.setenv("NIMTRAIL_API", world["url"])
    monkeypatch.delenv("NIMTRAIL_TOKEN", raising=False)
    return AppTest.from_file(MAIN, default_timeout=60)


def text_of(at: AppTest) -> str:
    """Everything a reader sees, tables included, as one string."""
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning",
                                  "success", "error", "code") for e in getattr(at, kind)]
    parts += [frame.value.to_csv(index=False) for frame in at.dataframe]
    return "\n".join(str(p) for p in parts)


def ok(at: AppTest) -> AppTest:
    """No exception, and nothing failed to load (findings are shown as alerts too)."""
    assert not at.exception, [e.value for e in at.exception]
    failed = [e.value for e in at.error if e.value.startswith("Could not")]
    assert not failed, failed
    return at


def chain_shows_the_incident(at: AppTest, incident: dict) -> None:
    text = text_of(at)
    for expected in (incident["action_id"], incident["tool_call_id"], incident["call_id"], "delete_records",
                     "prod-db/customers", "oncall-bot", "ops-agent", "auto_approved",
                     "ops-auto-remediation-v3", "prod/llama-3-1-8b", "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3",
                     "vllm-bf16-tp1-pp1", "1× H100", "summarisation of support tickets"):
        assert expected in text, expected
    assert "Approved automatically by a policy" in text
    assert "tool calling is **not allowed**" in text  # the summarisation endpoint's own record
    assert "`ops-agent` is **not among its allowed clients**" in text


def test_trace_back_opens_on_recent_actions_with_the_incident_among_them(app, world):
    at = ok(app.run())
    assert at.title[0].value == "Trace back"
    incident = world["incident"]
    listed = at.dataframe[0].value
    assert incident["action_id"] in set(listed["action id"])
    assert len(listed) == min(50, incident["counts"]["tool_actions"])
    picker = at.selectbox(key="tb_action")
    assert picker.value == listed["action id"][0]  # the riskiest is traced without a click
    ok(at.text_input(key="trace_id").input("").run())  # the box stays empty
    ok(picker.select(incident["action_id"]).run())
    chain_shows_the_incident(at, incident)


def test_trace_back_filters_narrow_the_list(app, world):
    incident = world["incident"]
    at = ok(app.run())
    everything = len(at.dataframe[0].value)
    ok(at.selectbox(key="tb_tool").select("delete_records").run())
    only = at.dataframe[0].value
    assert list(only["action id"]) == [incident["action_id"]]
    assert at.selectbox(key="tb_action").value == incident["action_id"]
    chain_shows_the_incident(at, incident)
    ok(at.selectbox(key="tb_tool").select("(any)").run())
    ok(at.text_input(key="tb_target").input("prod-db/orders").run())
    targets = set(at.dataframe[0].value["target"])
    assert targets and all(t.startswith("prod-db/orders/") for t in targets) and len(targets) < everything
    ok(at.selectbox(key="tb_caller").select("alice").run())
    assert set(at.dataframe[0].value["caller"]) == {"alice"}
    ok(at.text_input(key="tb_target").input("nowhere/").run())
    assert "No tool action matches these filters" in text_of(at)


def test_findings_lead_to_the_actions_they_were_raised_about(app, world):
    at = ok(app.run())
    pills = at.pills(key="tb_finding")
    ok(pills.select("unknown_deployment").run())  # about a deployment, not an action
    assert "No tool action in this window has a `unknown_deployment` finding" in text_of(at)
    for kind in world["incident_findings"]:  # where the processor checks policy
        ok(at.pills(key="tb_finding").select(kind).run())
        assert world["incident"]["action_id"] in set(at.dataframe[0].value["action id"]), kind
        if kind == "purpose_violation":
            assert list(at.dataframe[0].value["action id"]) == [world["incident"]["action_id"]]


@pytest.mark.parametrize("field", ["tool_call_id", "action_id", "call_id"])
def test_trace_back_by_any_id_typed_or_in_the_url(app, world, field):
    incident = world["incident"]
    at = ok(app.run())
    ok(at.text_input(key="trace_id").input(incident[field]).run())
    assert f"Found by {field.replace('_', ' ')}" in text_of(at)
    chain_shows_the_incident(at, incident)
    assert at.query_params["id"] == incident[field]  # the URL can be shared

    linked = AppTest.from_file(MAIN, default_timeout=60)
    linked.query_params[field] = incident[field]
    chain_shows_the_incident(ok(linked.run()), incident)


def test_trace_back_of_an_unknown_id_says_so(app):
    at = ok(app.run())
    ok(at.text_input(key="trace_id").input("chatcmpl-tool-does-not-exist").run())
    assert "Nothing in the warehouse has the id `chatcmpl-tool-does-not-exist`" in at.warning[0].value


def test_who_called_what_filters_and_opens_a_call(app, world):
    incident = world["incident"]
    at = ok(app.switch_page(PAGES["calls"]).run())
    calls = at.dataframe[0].value
    assert len(calls) == 100  # the first page of the run's calls
    ok(at.selectbox(key="calls_caller").select("oncall-bot").run())
    mine = at.dataframe[0].value
    assert set(mine["caller"]) == {"oncall-bot"} and len(mine) < len(calls)
    row = mine[mine["call id"] == incident["call_id"]].iloc[0]
    assert row["client service"] == "ops-agent" and row["deployment"] == "prod/llama-3-1-8b v1"
    assert row["actions that followed"] == "delete_records → prod-db/customers (ok)"
    ok(at.selectbox(key="calls_model").select("meta/llama-3.1-8b-instruct").run())
    there = at.dataframe[0].value  # the incident's call and its follow-up after the tool ran
    assert incident["call_id"] in set(there["call id"]) and len(there) == 2
    assert set(there["model"]) == {"meta/llama-3.1-8b-instruct"}
    ok(at.selectbox(key="calls_open").select(incident["call_id"]).run())
    chain_shows_the_incident(at, incident)
    assert at.page_link[0].proto.page.endswith("trace-back") or "trace" in at.page_link[0].proto.page
    ok(at.selectbox(key="calls_deployment").select("prod/mistral-7b").run())
    assert "No model call matches these filters" in text_of(at)


def test_the_incidents_trace_as_a_waterfall_and_its_agent_run_as_a_session(app, world):
    incident = world["incident"]
    trace_id = api_client.query(world["url"], "trace-back", {"call_id": incident["call_id"]})["call"]["trace_id"]
    at = ok(app.run())
    ok(at.text_input(key="trace_id").input(incident["call_id"]).run())
    links = [link.proto for link in at.get("page_link")]
    assert any(link.label == "Open the whole trace as a waterfall" and trace_id in link.query_string for link in links)

    linked = AppTest.from_file(MAIN, default_timeout=60)
    linked.query_params["trace_id"] = trace_id
    at = ok(linked.switch_page(TRACE_PAGE).run())
    assert at.title[0].value == "Trace"
    spec, plotted = _chart(at)
    roles = {r["role"] for r in plotted}
    assert {"agent", "model call", "tool"} <= roles, roles
    assert any("delete_records" in r["span"] for r in plotted)
    text = text_of(at)
    assert "ops-agent" in text and f"{len(plotted)} spans" in text
    titles = [e.label for e in at.expander]
    assert any("delete_records" in t for t in titles)
    assert "prod-db/customers" in text  # the incident's action in its span
    agent = next(r for r in plotted if r["role"] == "agent")

    session = AppTest.from_file(MAIN, default_timeout=60)
    session.query_params["session_id"] = agent["span_id"]
    at = ok(session.switch_page(SESSION_PAGE).run())
    steps = at.dataframe[0].value
    assert incident["call_id"] in set(steps["id"]) and incident["action_id"] in set(steps["id"])
    assert list(steps["step"]) == list(range(1, len(steps) + 1))

    unknown = AppTest.from_file(MAIN, default_timeout=60)
    unknown.query_params["trace_id"] = "0" * 32
    at = ok(unknown.switch_page(TRACE_PAGE).run())
    assert "No audited span has the trace id" in at.warning[0].value


def _shows_links(frame) -> None:
    """The table's "trace back" column is drawn as links (its values are checked as text)."""
    kinds = {name: c.get("type_config", {}).get("type") for name, c in orjson.loads(frame.proto.columns).items()}
    assert kinds.get("trace back") == "link", kinds


def test_every_call_and_action_links_to_its_trace_back(app, world):
    incident = world["incident"]
    at = ok(app.switch_page(PAGES["calls"]).run())
    ok(at.selectbox(key="calls_caller").select("oncall-bot").run())
    calls, actions = at.dataframe[0], at.dataframe[1]
    _shows_links(calls)
    assert all(link == f"trace-back?call_id={c}" for c, link in zip(calls.value["call id"], calls.value["trace back"]))
    _shows_links(actions)
    row = actions.value[actions.value["action id"] == incident["action_id"]].iloc[0]
    assert row["call id"] == incident["call_id"] and row["tool"] == "delete_records"
    assert row["trace back"] == f"trace-back?action_id={incident['action_id']}"
    assert 'url_path="trace-back"' in Path(MAIN).read_text()  # the page those links open
    for kind in ("call_id", "action_id"):  # what the Trace back page does with such a link
        linked = AppTest.from_file(MAIN, default_timeout=60)
        linked.query_params[kind] = incident[kind]
        at = ok(linked.run())
        assert f"Found by {kind.replace('_', ' ')}" in text_of(at)
        chain_shows_the_incident(at, incident)


def test_who_called_what_opens_the_newest_settled_call(tmp_path, monkeypatch):
    """A call still filling in (NIM's side seen, the client's not yet) is listed first but not
    opened: the newest call that names its model and caller is."""
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp_path / "data")})
    store = Store(config.warehouse_path)
    half = {f: None for f in ("caller", "client_service", "model", "ended_at", "finish_reason")}
    warehouse_data.write(store, "model_call", [
        warehouse_data.call("chatcmpl-settled", started_at=warehouse_data.ago(minutes=3),
                            observed_at=warehouse_data.ago(minutes=2)),
        warehouse_data.call("chatcmpl-filling-in", started_at=warehouse_data.ago(minutes=1),
                            observed_at=warehouse_data.ago(), signals=["log.nim"], **half),
        warehouse_data.call("chatcmpl-older", started_at=warehouse_data.ago(minutes=10))])
    server, url = _api(config, store)
    try:
        monkeypatch.setenv("NIMTRAIL_API", url)
        at = ok(AppTest.from_file(MAIN, default_timeout=60).switch_page(PAGES["calls"]).run())
        assert list(at.dataframe[0].value["call id"]) == ["chatcmpl-filling-in", "chatcmpl-settled", "chatcmpl-older"]
        assert at.selectbox(key="calls_open").value == "chatcmpl-settled"
        assert "alice (ops-agent) → meta/llama-3.1-8b-instruct" in at.selectbox(key="calls_open").format_func(
            "chatcmpl-settled")
    finally:
        server.shutdown()
        store.close()


def _chart(at: AppTest) -> tuple[str, list[dict]]:
    """The first chart's Vega-Lite spec and the rows of every dataset it plots."""
    chart = at.get("vega_lite_chart")[0].proto
    rows = []
    for dataset in chart.datasets:
        rows += pa.ipc.open_stream(dataset.data.data).read_all().to_pylist()
    return chart.spec, rows


def test_latency_by_gpu_profile_marks_the_upgrade(app):
    at = ok(app.switch_page(PAGES["latency"]).run())
    _spec, plotted = _chart(at)
    assert "H100 · tensorrt_llm-h100-fp8-tp4-pp1-latency" in {r.get("group") for r in plotted}
    marks = {r["label"]: r["time"] for r in plotted if r.get("label")}
    assert "prod/llama-3-3-70b v2" in marks  # the upgrade on the time axis
    assert "prod/llama-3-3-70b v1" not in marks  # registered before the window: off the axis
    text = text_of(at)
    for profile in ("H100 · vllm-bf16-tp1-pp1", "A100 · vllm-fp16-tp2-pp1", "L40S · sglang-fp8-tp1-pp1",
                    "H100 · tensorrt_llm-h100-fp8-tp4-pp1-throughput"):
        assert profile in text
    # The upgrade's card: what changed, and p50/p95/p99 after it against before, in percent.
    assert "prod/llama-3-3-70b v1 → v2" in text
    assert "tensorrt_llm-h100-fp8-tp4-pp1-throughput → tensorrt_llm-h100-fp8-tp4-pp1-latency" in text
    p95 = next(m for m in at.metric if m.label == "TTFT p95 after")
    assert p95.value.endswith(" ms") and "(was " in p95.delta
    assert p95.delta.startswith("+")  # the simulated regression (median TTFT 120 → 165 ms)

    # In 10-second buckets the new profile's line starts where the upgrade is marked.
    ok(at.selectbox(key="lat_window").select("last 15 minutes").run())
    _spec, plotted = _chart(at)
    upgrade = next(r["time"] for r in plotted if r.get("label") == "prod/llama-3-3-70b v2")
    after = [r["time"] for r in plotted if r.get("group") == "H100 · tensorrt_llm-h100-fp8-tp4-pp1-latency"]
    before = [r["time"] for r in plotted if r.get("group") == "H100 · tensorrt_llm-h100-fp8-tp4-pp1-throughput"]
    assert len(after) > 1 and len(before) > 1
    # (a request that ends after the rollout may have started just before it)
    assert min(after) > min(before) and min(after) >= upgrade - dt.timedelta(seconds=20)
    assert max(before) <= upgrade

    ok(at.selectbox(key="lat_gpu").select("A100").run())
    summary = at.dataframe[0].value
    assert list(summary["group"]) == ["A100 · vllm-fp16-tp2-pp1"]
    ok(at.selectbox(key="lat_gpu").select("(any)").run())
    ok(at.selectbox(key="lat_by").select("deployment version").run())
    groups = set(at.dataframe[0].value["group"])
    assert {"prod/llama-3-3-70b v1", "prod/llama-3-3-70b v2", "prod/llama-3-1-8b v1"} <= groups
    ok(at.selectbox(key="lat_metric").select("queue").run())
    assert "queue p95 (ms)" in _chart(at)[0]


def test_usage_per_caller_and_deployment_adds_up_to_the_totals(app, world):
    at = ok(app.switch_page(PAGES["usage"]).run())
    calls = int(at.metric[0].value.replace(",", ""))
    every = at.dataframe[0].value
    assert "oncall-bot" in set(every["caller"])
    assert every["calls"].sum() == calls == world["incident"]["counts"]["model_calls"]
    _spec, plotted = _chart(at)
    assert plotted and {r["group"] for r in plotted} <= set(every["caller"])
    ok(at.selectbox(key="usage_by").select("deployment").run())
    every = at.dataframe[0].value.set_index("deployment")
    assert {"prod/llama-3-1-8b", "prod/llama-3-3-70b"} <= set(every.index)
    # every call of the fleet ran on a registered version with its GPU count
    assert every["GPU-seconds"].sum() == pytest.approx(float(at.metric[2].value.replace(",", "")),
                                                  abs=0.1 * len(every))  # (each row to 0.1 s)
    assert (every["GPU-seconds"] > 0).all() and int(at.metric[3].value) == 0
    ok(at.selectbox(key="usage_measure").select("tokens").run())
    assert "tokens by deployment" in text_of(at)


def test_deployments_inventory_versions_diff_and_findings(app, world):
    at = ok(app.switch_page(PAGES["deployments"]).run())
    inventory = at.dataframe[0].value
    assert sorted(inventory["deployment"]) == ["prod/llama-3-1-8b", "prod/llama-3-3-70b", "prod/mistral-7b",
                                               "staging/qwen-2-5-7b"]
    upgraded = inventory[inventory["deployment"] == "prod/llama-3-3-70b"].iloc[0]
    assert upgraded["version"] == 2 and upgraded["GPU"] == "4× H100"
    assert at.selectbox(key="dep_chosen").value == "prod/llama-3-3-70b"  # the latest change first
    diff = at.dataframe[1].value
    changed = dict(zip(diff["field"], zip(diff["before"], diff["after"])))
    assert changed["profile_name"] == ("tensorrt_llm-h100-fp8-tp4-pp1-throughput",
                                       "tensorrt_llm-h100-fp8-tp4-pp1-latency")
    assert changed["nim_image"][1].endswith(":1.8.4")
    text = text_of(at)
    assert "unknown_deployment" in text and world["stray"]["subject_ids"][0] in text
    assert "Drift: a running NIM differs" in text
    ok(at.selectbox(key="dep_chosen").select("prod/mistral-7b").run())
    assert "First version (source: helm)." in text_of(at) and len(at.dataframe) == 1  # nothing to diff


def test_findings_one_line_per_group_worst_first_and_every_member(app, world):
    at = ok(app.switch_page(PAGES["findings"]).run())
    ok(at.selectbox(key="fi_window").select("all time").run())
    groups = at.dataframe[0].value
    stored = dict(world["finding_counts"])
    assert groups["count"].sum() == sum(stored.values())
    assert len(groups) < sum(stored.values())  # repeats collapse
    assert groups["severity"].iloc[0] == "critical" and groups["kind"].iloc[0] in world["incident_findings"]
    assert list(groups["severity"]) == sorted(groups["severity"], key=["critical", "high", "medium", "low"].index)
    stray = groups[groups["kind"] == "unknown_deployment"]
    assert list(stray["deployment"]) == [world["stray"]["subject_ids"][0]]
    # one group opened: its findings, each a link to trace back
    biggest = int(groups["count"].idxmax())
    ok(at.selectbox(key="fi_group").select(biggest).run())
    assert len(at.dataframe[1].value) == min(groups["count"].iloc[biggest], 500)
    assert at.selectbox(key="fi_subject").value


def test_compliance_report_export_verify_and_access_log(app, world):
    api_client.action(world["url"], "hold-add", {"caller": "oncall-bot", "reason": "incident review"})
    at = ok(app.switch_page(PAGES["compliance"]).run())
    text = text_of(at)
    assert "incident review" in text and "active" in text  # the hold
    held = at.dataframe[1].value
    assert held[held["table"] == "tool_actions"]["rows"].iloc[0] == world["incident"]["counts"]["tool_actions"]
    assert "query/retention-report" in text  # this very page's reads are in the access log

    ok(at.radio(key="comp_format").set_value("CSV").run())
    ok(at.button(key="comp_export").click().run())
    done = at.session_state["comp_exported"]
    assert hashlib.sha256(done["body"]).hexdigest() == done["meta"]["sha256"]
    assert done["meta"]["sha256"] in at.success[0].value
    assert at.download_button(key="comp_download").proto.label.endswith(".csv")

    # The file's SHA-256, pasted: produced here, when, with which filters, by whom.
    ok(at.text_input(key="comp_check_id").input(done["meta"]["sha256"]).run())
    assert any(f"Produced by this nimtrail: export `{done['meta']['export_id']}`" in s.value
               and "by **anonymous@loopback**" in s.value for s in at.success)
    ok(at.text_input(key="comp_check_id").input("f" * 64).run())
    assert any("Not produced by this nimtrail" in e.value for e in at.error)
    ok(at.text_input(key="comp_check_id").input("").run())

    ok(at.button(key="comp_verify").click().run())
    assert any("The ledger verifies" in s.value for s in at.success)

    ok(at.text_input(key="comp_operation").input("action/hold-add").run())
    log = at.dataframe[-1].value
    assert set(log["operation"]) == {"action/hold-add"} and list(log["status"]) == [200]


def test_viewers_see_hashes_not_content_and_no_compliance_data(world, monkeypatch):
    monkeypatch.setenv("NIMTRAIL_API", world["guarded_url"])
    monkeypatch.setenv("NIMTRAIL_TOKEN", "viewer-token")
    at = AppTest.from_file(MAIN, default_timeout=60)
    ok(at.run())
    ok(at.text_input(key="trace_id").input(world["incident"]["tool_call_id"]).run())
    assert "hidden from your role" in text_of(at) and "prod/llama-3-1-8b" in text_of(at)
    at.switch_page(PAGES["compliance"]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and all("403" in e for e in errors)
    assert "NIMTRAIL_TOKEN" in text_of(at)


def test_wrong_token_and_unreachable_api_are_messages_not_tracebacks(world, monkeypatch, tmp_path):
    monkeypatch.setenv("NIMTRAIL_API", world["guarded_url"])
    monkeypatch.setenv("NIMTRAIL_TOKEN", "not-a-token")
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception and "401" in at.error[0].value

    monkeypatch.setenv("NIMTRAIL_API", "http://127.0.0.1:9")  # nothing listens on the discard port
    for page in (None, *PAGES.values()):
        at = AppTest.from_file(MAIN, default_timeout=60)
        if page:
            at.run()
            at.switch_page(page)
        at.run()
        assert not at.exception
        assert len(at.error) == 1 and "is the warehouse running?" in at.error[0].value


def test_an_empty_warehouse_says_what_to_do(tmp_path, monkeypatch):
    config = config_mod.load(None, env={"NIMTRAIL_DATA_DIR": str(tmp_path / "data")})
    store = Store(config.warehouse_path)
    server, url = _api(config, store)
    try:
        monkeypatch.setenv("NIMTRAIL_API", url)
        at = ok(AppTest.from_file(MAIN, default_timeout=60).run())
        assert "nimtrail up --demo" in at.info[0].value
        for page, hint in (("calls", "nimtrail up --demo"), ("latency", "nimtrail up --demo"),
                           ("findings", "nimtrail up --demo"),
                           ("usage", "nimtrail up --demo"),
                           ("deployments", "nimtrail deployments register")):
            ok(at.switch_page(PAGES[page]).run())
            assert hint in text_of(at), page
        ok(at.switch_page(PAGES["compliance"]).run())
        assert "nimtrail hold add" in text_of(at)
    finally:
        server.shutdown()
        store.close()


def test_pages_are_thin_and_nothing_runs_at_import():
    """Importing the data module touches no network and no Streamlit runtime."""
    import importlib

    data = importlib.import_module("app.data")
    assert data.api_url()  # a function call, not an import-time connection
    for path in (REPO / "app").rglob("*.py"):
        assert len(path.read_text().splitlines()) < 400, path
    assert Path(MAIN).read_text().count("st.Page(") == 9
