"""Trace back: from an action (or a tool call, or a model call) to the prompt, the caller and
the deployment version, with its approval gate and findings. Opens on the riskiest recent
action, so an incident is one look away; `?id=` (or `?action_id=`, `?tool_call_id=`,
`?call_id=`) in the URL traces that id directly."""

import streamlit as st

from app import chain, data, views

ID_PARAMS = ("id", "action_id", "tool_call_id", "call_id")

st.title("Trace back")
st.caption("From an action to the tool call, the model response that asked for it, its prompt, "
           "the caller and the deployment version it ran on — with the approval gate it passed "
           "and the findings it raised.")

if "trace_id" not in st.session_state:
    st.session_state.trace_id = next((st.query_params[k] for k in ID_PARAMS if st.query_params.get(k)), "")
identifier = st.text_input("Action id, tool call id or model call id", key="trace_id",
                           placeholder="e.g. chatcmpl-tool-… (tool call), chatcmpl-… (model call), "
                                       "or an action's span id").strip()

if identifier:
    st.query_params.from_dict({"id": identifier})
    found = views.load("the chain", data.trace, identifier)
    if found is not None:
        kind, doc = found
        if doc is None:
            st.warning(f"Nothing in the warehouse has the id `{identifier}` (tried it as an action id, "
                       "a tool call id and a model call id). Ids are exact; records may take a few "
                       "seconds to arrive after the call.", icon=":material/search_off:")
        else:
            st.success(f"Found by {kind.replace('_', ' ')} `{identifier}`.", icon=":material/check_circle:")
            focus = identifier if kind == "action_id" else None
            chain.render(doc, focus=focus)
    st.stop()

for key in ID_PARAMS:
    if key in st.query_params:
        del st.query_params[key]

facets = views.load("filters", data.facets) or {}
st.subheader("Recent actions, riskiest first")
c1, c2, c3, c4 = st.columns(4)
with c1:
    tool = views.pick("Tool", facets.get("tools"), key="tb_tool")
with c2:
    target = st.text_input("Target (or its prefix)", key="tb_target", placeholder="e.g. prod-db/").strip()
with c3:
    caller = views.pick("Caller", facets.get("callers"), key="tb_caller")
with c4:
    since, until = views.time_window("tb", default="last 7 days")
flagged = st.toggle("Only actions with findings or a destructive tool", key="tb_flagged")
kinds = {f["kind"]: f for f in facets.get("findings") or []}
finding_kind = None
if kinds:
    finding_kind = st.pills("Findings (worst first): pick one to see the actions it was raised about",
                            list(kinds), key="tb_finding", format_func=lambda k: (
                                f"{k} ({kinds[k]['severity'] or 'no severity'}) · {kinds[k]['count']}"))

result = views.load("actions", data.actions, order="risk", tool_name=tool, target=target or None,
                    caller=caller, since=since, until=until, flagged=flagged or None,
                    finding_kind=finding_kind, limit=50)
if result is None:
    st.stop()
rows = result["rows"]
if not rows:
    if finding_kind:
        st.info(f"No tool action in this window has a `{finding_kind}` finding (it may be about a "
                "model call or a deployment: see Who called what or Deployments).",
                icon=":material/filter_alt_off:")
        st.stop()
    views.stop_with_nothing_found("tool action", "tool actions", bool(facets.get("tools")))


def _flags(row: dict) -> str:
    out = list(row.get("finding_kinds") or [])
    if row.get("destructive"):
        out.append("destructive tool")
    return ", ".join(out)


st.dataframe([{
    "when (UTC)": views.when(r["started_at"]), "tool": r["tool_name"], "target": r["target"],
    "caller": r.get("caller"), "client service": r.get("client_service"),
    "deployment": views.deployment_label(r), "gate": r.get("gate"), "decision": r.get("gate_decision"),
    "outcome": r.get("outcome"), "severity": r.get("finding_severity"), "flags": _flags(r),
    "action id": r["action_id"],
} for r in rows], hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 300))
if result.get("next_offset") is not None:
    st.caption("Showing the 50 riskiest; narrow the filters to see others.")

labels = {r["action_id"]: (f"{r['tool_name']} → {r.get('target') or '?'} · {r.get('caller') or 'unknown caller'}"
                           f" ({r.get('client_service') or '?'}) · {views.when(r['started_at'])}"
                           + (f" · {_flags(r)}" if _flags(r) else "")) for r in rows}
chosen = st.selectbox("Trace this action", list(labels), format_func=labels.get, key="tb_action")
doc = views.load("the chain", data.trace_back, action_id=chosen)
if doc is not None:
    if doc.get("found"):
        chain.render(doc, focus=chosen)
    else:
        st.warning("This action is gone from the warehouse (purged by retention?). Refresh the list.")
