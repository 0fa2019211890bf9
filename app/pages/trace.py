"""Trace: every audited span of one trace as a waterfall — the agent, its model calls (NIM's
own span under each), its tools and the MCP servers they reached — with each span's call
or action, and the content your role may see. `?trace_id=` in the URL opens that trace."""

import streamlit as st

from app import chain, data, views, waterfall

st.title("Trace")
st.caption("The whole trace as a tree: who ran what, in which service, when, and for how long.")

trace_id = views.id_from_url("Trace id", "trace_id",
                             "Enter a trace id, or open one from Trace back or Who called what.",
                             ":material/account_tree:", placeholder="32 hex digits, as in a call's trace id")
doc = views.load("the trace", data.trace_waterfall, trace_id)
if doc is None:
    st.stop()
nodes = doc["rows"]
if not nodes:
    st.warning(f"No audited span has the trace id `{trace_id}`. Spans may take a few seconds to arrive.",
               icon=":material/search_off:")
    st.stop()
total = max((n.get("offset_ms") or 0) + (n.get("duration_ms") or 0) for n in nodes)
st.markdown(f"**{len(nodes)} spans** over **{total:,.1f} ms** in "
            f"{', '.join(f'`{s}`' for s in doc['services']) or 'unknown services'}")
if doc.get("truncated"):
    st.warning("This trace has more spans than the view shows.", icon=":material/content_cut:")
figure = waterfall.chart(nodes)
if figure is not None:
    st.altair_chart(figure, width="stretch")



def _content(label: str, value: object) -> None:
    """Kept content where the role sees it; else why it is not shown."""
    st.markdown(f"<small>{label}</small>", unsafe_allow_html=True)
    st.code(chain.content(doc, value), language=None, wrap_lines=True)


def _trace_back(what: str, param: str, value: str) -> None:
    st.page_link("pages/trace_back.py", label=f"Trace back this {what}", icon=":material/manage_search:",
                 query_params={param: value})


st.subheader("Spans")
for i, node in enumerate(nodes, 1):
    call, action = node.get("call"), node.get("action")
    title = f"{i}. {waterfall.label(node).lstrip(waterfall.INDENT[0])} — {views.ms(node.get('duration_ms'))}"
    with st.expander(title, expanded=False):
        columns = st.columns(4)
        columns[0].markdown(f"<small>span</small><br>`{node['span_id']}`", unsafe_allow_html=True)
        columns[1].markdown(f"<small>parent</small><br>`{node.get('parent_span_id') or '–'}`",
                            unsafe_allow_html=True)
        columns[2].markdown(f"<small>starts at</small><br>+{views.ms(node.get('offset_ms'))}",
                            unsafe_allow_html=True)
        session = node.get("conversation_id") or node.get("mcp_session_id") or (
            node["span_id"] if node.get("role") == "agent" else None)
        if session:
            columns[3].page_link("pages/session.py", label="Open its session", icon=":material/forum:",
                                 query_params={"session_id": session})
        if call:
            st.markdown(f"model call `{call['call_id']}` by **{call.get('caller') or 'unknown caller'}** on "
                        f"{views.deployment_label(call)} — finish **{call.get('finish_reason') or '?'}**, "
                        f"TTFT {views.ms(call.get('ttft_ms'))}")
            _content("prompt", call.get("prompt_text"))
            _content("response", call.get("response_text"))
            _trace_back("call", "call_id", call["call_id"])
        if action:
            st.markdown(f"tool action `{action['action_id']}` → `{action.get('target') or '?'}` via "
                        f"{views.text(action.get('mcp_server'))}, gate {views.text(action.get('gate'))} "
                        f"({views.text(action.get('gate_decision'))}), outcome **{views.text(action.get('outcome'))}**")
            _content("arguments", action.get("arguments"))
            _trace_back("action", "action_id", action["action_id"])
