"""Session: one conversation's, MCP session's or agent run's model calls and tool actions in
order, across the traces it touched. `?session_id=` in the URL opens that session."""

import streamlit as st

from app import data, views

st.title("Session")
st.caption("An agent's run or a conversation step by step: `gen_ai.conversation.id`, "
           "`mcp.session.id`, or an invoke_agent span id.")

session_id = views.id_from_url("Session id", "session_id", "Enter a session id, or open one from a span of the "
                               "Trace page.", ":material/forum:")
doc = views.load("the session", data.session, session_id)
if doc is None:
    st.stop()
if not doc["found"]:
    st.warning(f"Nothing in the warehouse belongs to the session `{session_id}`.", icon=":material/search_off:")
    st.stop()
agents = ", ".join(f"`{a.get('name') or a['span_id']}`" for a in doc["agents"]) or "no agent span"
st.markdown(f"**{len(doc['rows'])} steps** in {len(doc['traces'])} trace(s); agents: {agents}")


def _what(step: dict) -> str:
    record = step.get("model_call") or step.get("tool_action") or {}
    if step["kind"] == "model_call":
        tools = ", ".join(record.get("tool_names") or [])
        asked = f" ({tools})" if tools else ""
        return f"{record.get('model') or '?'} → {record.get('finish_reason') or '?'}{asked}"
    return f"{record.get('tool_name')} → {record.get('target') or '?'} ({record.get('outcome') or '?'})"


st.dataframe([{
    "step": s["step"], "when (UTC)": views.when(s["started_at"]),
    "kind": s["kind"].replace("_", " "), "what": _what(s), "service": s.get("service"),
    "caller": (s.get("model_call") or {}).get("caller"), "id": s["id"], "trace id": s["trace_id"],
} for s in doc["rows"]], hide_index=True, width="stretch", height=min(38 + 35 * len(doc["rows"]), 600))
for trace_id in doc["traces"]:
    st.page_link("pages/trace.py", label=f"Open trace {trace_id}", icon=":material/account_tree:",
                 query_params={"trace_id": trace_id})
