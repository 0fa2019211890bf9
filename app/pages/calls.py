"""Who called what: model calls filtered by caller, client service, model, deployment and
time, each with the tool actions that followed; one call opened as its full chain. Every
call and action links to its chain on the Trace back page."""

import datetime as dt
from urllib.parse import quote

import streamlit as st

from app import chain, data, views
from nimtrail.config import ProcessorConfig

# A call's record fills in as its evidence arrives (the client's span brings the caller, NIM's
# span or log line the model and timings); each arrival re-emits it with a higher version and
# a fresh observed_at, until the processor's join window has passed. The newest call is often
# still half there, so the call opened by default is the newest settled one: it has ended and
# names its model and who called, or nothing has changed it for a default join window.
SETTLED_AFTER = dt.timedelta(seconds=ProcessorConfig().join_window)
TRACE_BACK = "trace-back"  # the Trace back page's url_path (app/main.py)


def _age(observed_at: str | None, now: dt.datetime) -> dt.timedelta:
    if not observed_at:
        return dt.timedelta(0)
    seen = dt.datetime.fromisoformat(str(observed_at))
    return now - (seen if seen.tzinfo else seen.replace(tzinfo=dt.timezone.utc))


def settled(row: dict, now: dt.datetime) -> bool:
    """Whether this version of the call is what it will stay (see SETTLED_AFTER)."""
    complete = row.get("ended_at") and row.get("model") and (row.get("caller") or row.get("client_service"))
    return bool(complete) or _age(row.get("observed_at"), now) >= SETTLED_AFTER


def trace_link(kind: str, identifier: str) -> str:
    """The Trace back page with this id in its URL, relative to the app's own address."""
    return f"{TRACE_BACK}?{kind}={quote(identifier, safe='')}"

st.title("Who called what")
st.caption("Every model call with who made it, through which service, on which model and "
           "deployment version — and the tool actions its response led to.")

facets = views.load("filters", data.facets) or {}
c1, c2, c3, c4, c5 = st.columns(5)
with c1:
    caller = views.pick("Caller", facets.get("callers"), key="calls_caller")
with c2:
    service = views.pick("Client service", facets.get("client_services"), key="calls_service")
with c3:
    model = views.pick("Model", facets.get("models"), key="calls_model")
with c4:
    deployment = views.pick("Deployment", facets.get("deployments"), key="calls_deployment")
with c5:
    since, until = views.time_window("calls", default="last 24 hours")
c1, c2 = st.columns([1, 4])
with c1:
    limit = st.selectbox("Rows", [50, 100, 500, 1000], index=1, key="calls_limit")
with c2:
    with_actions = st.toggle("Only calls followed by a tool action", key="calls_with_actions")

result = views.load("model calls", data.calls, caller=caller, client_service=service, model=model,
                    deployment_id=deployment, since=since, until=until, limit=limit)
if result is None:
    st.stop()
rows = result["rows"]
if with_actions:
    rows = [r for r in rows if r.get("actions")]
if not rows:
    views.stop_with_nothing_found("model call", "model calls", bool(facets.get("models") or facets.get("callers")))


def _actions(row: dict) -> str:
    return "; ".join(f"{a['tool_name']} → {a.get('target') or '?'} ({a.get('outcome') or '?'})"
                     for a in row.get("actions") or [])


st.caption(f"{len(rows)} call(s)" + (" — more match: narrow the filters or show more rows"
                                     if result.get("next_offset") is not None else ""))
st.dataframe([{
    "when (UTC)": views.when(r["started_at"]), "caller": r.get("caller"),
    "client service": r.get("client_service"), "model": r.get("model"),
    "deployment": views.deployment_label(r), "actions that followed": _actions(r),
    "status": r.get("status"), "finish": r.get("finish_reason"), "in tok": r.get("input_tokens"),
    "out tok": r.get("output_tokens"), "TTFT ms": r.get("ttft_ms"), "e2e ms": r.get("e2e_ms"),
    "call id": r["call_id"], "trace back": trace_link("call_id", r["call_id"]),
} for r in rows], hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 420),
    column_config={"trace back": st.column_config.LinkColumn(display_text="trace back")})

followed = [(r, a) for r in rows for a in r.get("actions") or []]
if followed:
    st.caption(f"{len(followed)} tool action(s) these calls led to")
    st.dataframe([{
        "call (UTC)": views.when(r["started_at"]), "caller": r.get("caller"), "tool": a["tool_name"],
        "target": a.get("target"), "outcome": a.get("outcome"), "call id": r["call_id"],
        "action id": a["action_id"], "trace back": trace_link("action_id", a["action_id"]),
    } for r, a in followed], hide_index=True, width="stretch", height=min(38 + 35 * len(followed), 300),
        column_config={"trace back": st.column_config.LinkColumn(display_text="trace back")})

st.subheader("One call")
labels = {r["call_id"]: (f"{views.when(r['started_at'])} · {r.get('caller') or 'unknown caller'} "
                         f"({r.get('client_service') or '?'}) → {r.get('model') or '?'}"
                         + (f" · {_actions(r)}" if r.get("actions") else "")) for r in rows}
now = dt.datetime.now(dt.timezone.utc)
first_settled = next((i for i, r in enumerate(rows) if settled(r, now)), 0)
chosen = st.selectbox("Open a call", list(labels), index=first_settled, format_func=labels.get, key="calls_open",
                      help="Opens the newest settled call: one that has ended and names its model and "
                           "caller, or that has not changed for the join window. Newer ones may still fill in.")
st.page_link("pages/trace_back.py", label="Open in Trace back", icon=":material/manage_search:",
             query_params={"call_id": chosen})
doc = views.load("the call", data.trace_back, call_id=chosen)
if doc is not None:
    chain.render(doc)
