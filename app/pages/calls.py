"""Who called what: model calls filtered by caller, client service, model, deployment and
time, each with the tool actions that followed; one call opened as its full chain."""

import streamlit as st

from app import chain, data, views

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
    "call id": r["call_id"],
} for r in rows], hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 420))

st.subheader("One call")
labels = {r["call_id"]: (f"{views.when(r['started_at'])} · {r.get('caller') or 'unknown caller'} "
                         f"({r.get('client_service') or '?'}) → {r.get('model') or '?'}"
                         + (f" · {_actions(r)}" if r.get("actions") else "")) for r in rows}
chosen = st.selectbox("Open a call", list(labels), format_func=labels.get, key="calls_open")
st.page_link("pages/trace_back.py", label="Open in Trace back", icon=":material/manage_search:",
             query_params={"call_id": chosen})
doc = views.load("the call", data.trace_back, call_id=chosen)
if doc is not None:
    chain.render(doc)
