"""The trace-back chain as a timeline: action ← approval gate ← tool call ← model response
← prompt ← caller ← deployment version, with the findings raised about any link.

`render(doc)` takes a `trace-back` answer as the query API gives it (content fields null
and `content_hidden` set for roles that may not see content)."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app.views import REGISTER, finding_box, gpu, ms, text, when

HIDDEN = "hidden from your role (the API returns content to responder, compliance and admin tokens)"
NOT_KEPT = "not kept (content is recorded only where policy keeps it, and expires first)"


def content(doc: dict[str, Any], value: Any) -> str:
    if value:
        return str(value)
    return HIDDEN if doc.get("content_hidden") else NOT_KEPT


def _step(number: int, title: str, subtitle: str = "") -> st.delta_generator.DeltaGenerator:
    box = st.container(border=True)
    box.markdown(f"**{number}. {title}**" + (f" — {subtitle}" if subtitle else ""))
    return box


def _facts(box, pairs: list[tuple[str, Any]]) -> None:
    """Label/value pairs in three columns; ids in code style."""
    columns = box.columns(3)
    for i, (label, value) in enumerate(pairs):
        columns[i % 3].markdown(f"<small>{label}</small><br>{value}", unsafe_allow_html=True)


def _code(value: Any) -> str:
    return f"`{value}`" if value not in (None, "") else "–"


def timeline_chart(doc: dict[str, Any]) -> alt.Chart | None:
    """A Gantt-like strip: the model call, each action, each finding, on one time axis."""
    spans: list[dict[str, Any]] = []
    call = doc.get("call")
    if call and call.get("started_at"):
        spans.append({"step": "model call", "label": f"{call.get('model') or 'model'} ({call.get('caller') or '?'})",
                      "start": call["started_at"], "end": call.get("ended_at") or call["started_at"]})
    for action in doc.get("actions") or ():
        if action.get("started_at"):
            spans.append({"step": "tool action", "label": f"{action.get('tool_name')} → {action.get('target')}",
                          "start": action["started_at"], "end": action.get("ended_at") or action["started_at"]})
    if not spans:
        return None
    frame = pd.DataFrame(spans)
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    frame["end"] = pd.to_datetime(frame["end"], utc=True)
    frame["row"] = frame["step"] + ": " + frame["label"]
    return alt.Chart(frame).mark_bar(cornerRadius=3, height=18).encode(
        x=alt.X("start:T", title="time (UTC)", axis=alt.Axis(format="%H:%M:%S.%L", labelAngle=0)),
        x2="end:T",
        y=alt.Y("row:N", sort=list(frame["row"]), title=None, axis=alt.Axis(labelLimit=420)),
        color=alt.Color("step:N", legend=None),
        tooltip=["step", "label", alt.Tooltip("start:T", format="%H:%M:%S.%L"),
                 alt.Tooltip("end:T", format="%H:%M:%S.%L")],
    ).properties(height=alt.Step(34))


def render(doc: dict[str, Any], focus: str | None = None) -> None:
    """The chain of one trace-back answer; `focus` is the action id to lead with."""
    actions = doc.get("actions") or []
    call = doc.get("call")
    action = next((a for a in actions if a.get("action_id") == focus), actions[0] if actions else None)
    findings = doc.get("findings") or []
    if findings:
        worst = sorted(findings, key=lambda f: ["critical", "high", "medium", "low"].index(
            (f.get("severity") or "low").lower()) if (f.get("severity") or "low").lower() in
            ("critical", "high", "medium", "low") else 4)
        st.markdown(f"**{len(findings)} finding(s)** raised about this chain:")
        for finding in worst:
            finding_box(finding)
    chart = timeline_chart(doc)
    if chart is not None:
        st.altair_chart(chart, width="stretch")
    trace_id = (call or action or {}).get("trace_id")
    if trace_id:
        st.page_link("pages/trace.py", label="Open the whole trace as a waterfall", icon=":material/account_tree:",
                     query_params={"trace_id": trace_id})
    n = 0
    if action:
        n += 1
        box = _step(n, "Action", f"`{action.get('tool_name')}` on `{action.get('target') or '?'}`, "
                                  f"outcome **{action.get('outcome') or '?'}**")
        _facts(box, [("started", when(action.get("started_at"))), ("ended", when(action.get("ended_at"))),
                     ("MCP server", _code(action.get("mcp_server"))),
                     ("action id", _code(action.get("action_id"))), ("trace id", _code(action.get("trace_id"))),
                     ("error", text(action.get("error")))])
        box.markdown(f"<small>arguments (SHA-256 `{action.get('arguments_sha256') or '–'}`)</small>",
                     unsafe_allow_html=True)
        box.code(content(doc, action.get("arguments")), language=None, wrap_lines=True)
        if len(actions) > 1:
            others = ", ".join(f"`{a.get('tool_name')}` ({a.get('outcome')})" for a in actions if a is not action)
            box.caption(f"The same model response also led to: {others}")

        n += 1
        gate, decision = action.get("gate") or "none", action.get("gate_decision")
        subtitle = ("no approval gate" if gate == "none" else
                    f"{gate} gate: **{decision or 'no decision recorded'}**")
        box = _step(n, "Approval gate", subtitle)
        _facts(box, [("gate", text(gate)), ("decision", text(decision)),
                     ("approver", text(action.get("approver"))), ("policy", _code(action.get("policy_id"))),
                     ("executed by", text(action.get("executed_by")))])
        if gate == "policy" and decision in ("auto_approved", "approved") and not action.get("approver"):
            box.warning("Approved automatically by a policy: no person looked at this action.",
                        icon=":material/gavel:")

        n += 1
        box = _step(n, "Tool call", f"`{action.get('tool_call_id') or '–'}`")
        requested = (call or {}).get("tool_names") or []
        box.markdown(f"requested by model response `{action.get('call_id') or '–'}`"
                     + (f" among tool calls: {', '.join(f'`{t}`' for t in requested)}" if requested else ""))
        if not action.get("call_id"):
            box.warning("Not yet linked to a model call: the response that asked for this tool call has not "
                        "reached the warehouse (or carried no tool call id). An `unattributed_action` "
                        "finding follows after the join window.", icon=":material/link_off:")
    if call:
        n += 1
        box = _step(n, "Model response", f"`{call.get('call_id')}` — finish reason "
                                          f"**{call.get('finish_reason') or '?'}**, status {text(call.get('status'))}")
        _facts(box, [("model", _code(call.get("model"))), ("started", when(call.get("started_at"))),
                     ("ended", when(call.get("ended_at"))), ("TTFT", ms(call.get("ttft_ms"))),
                     ("end-to-end", ms(call.get("e2e_ms"))), ("queue", ms(call.get("queue_ms"))),
                     ("output tokens", text(call.get("output_tokens"))),
                     ("response SHA-256", _code(call.get("response_sha256"))),
                     ("seen by", text(", ".join(call.get("signals") or [])))])
        box.code(content(doc, call.get("response_text")), language=None, wrap_lines=True)

        n += 1
        box = _step(n, "Prompt", f"SHA-256 `{call.get('prompt_sha256') or '–'}`")
        _facts(box, [("input tokens", text(call.get("input_tokens"))), ("operation", text(call.get("operation"))),
                     ("trace id", _code(call.get("trace_id")))])
        box.code(content(doc, call.get("prompt_text")), language=None, wrap_lines=True)

        n += 1
        caller = doc.get("caller") or {}
        box = _step(n, "Caller", f"**{caller.get('caller') or 'unknown caller'}** through "
                                  f"**{caller.get('client_service') or 'an unknown service'}**")
        _facts(box, [("caller", text(caller.get("caller"))), ("client service", text(caller.get("client_service"))),
                     ("client address", text(caller.get("client_address"))),
                     ("API key fingerprint", _code(caller.get("api_key_fingerprint")))])
        _deployment(n + 1, call, doc.get("deployment"), actions)
    elif action:
        st.info("The model call behind this action is not in the warehouse yet, so its prompt, caller "
                "and deployment are unknown for now.", icon=":material/hourglass_empty:")


def mismatches(call: dict[str, Any], deployment: dict[str, Any], actions: list[dict[str, Any]]) -> list[str]:
    """Where the call and its actions go against the deployment's own governance record
    (facts for the reader; the policy findings are the processor's)."""
    out = []
    if deployment.get("tool_calling_allowed") is False and (call.get("tool_names") or actions):
        out.append("Its record says tool calling is **not allowed**, yet this response requested tools.")
    allowed = deployment.get("allowed_clients") or []
    if allowed and call.get("client_service") and call["client_service"] not in allowed:
        out.append(f"`{call['client_service']}` is **not among its allowed clients** ({', '.join(allowed)}).")
    destructive = set(deployment.get("destructive_tools") or [])
    for name in sorted({a.get("tool_name") for a in actions if a.get("tool_name") in destructive}):
        out.append(f"`{name}` is listed as a **destructive** tool for this deployment.")
    return out


def _deployment(n: int, call: dict[str, Any], deployment: dict[str, Any] | None,
                actions: list[dict[str, Any]]) -> None:
    if deployment:
        box = _step(n, "Deployment version", f"**{deployment['deployment_id']}** v{deployment.get('version')}"
                                              f" — {gpu(deployment)} {deployment.get('profile_name') or ''}")
        _facts(box, [("image", _code(deployment.get("nim_image"))), ("model", _code(deployment.get("model_id"))),
                     ("profile", _code(deployment.get("profile_name"))), ("GPU", gpu(deployment)),
                     ("engine", text(deployment.get("engine_backend"))), ("precision", text(deployment.get("precision"))),
                     ("NIM release", text(deployment.get("nim_release"))),
                     ("valid from", when(deployment.get("valid_from"))), ("source", text(deployment.get("source"))),
                     ("purpose", text(deployment.get("purpose"))),
                     ("tool calling allowed", text(deployment.get("tool_calling_allowed"))),
                     ("allowed clients", text(", ".join(deployment.get("allowed_clients") or []))),
                     ("destructive tools", text(", ".join(deployment.get("destructive_tools") or []))),
                     ("reviewed by", text(deployment.get("reviewed_by"))),
                     ("update channel", text(deployment.get("update_channel")))])
        for problem in mismatches(call, deployment, actions):
            box.warning(problem, icon=":material/report:")
        return
    box = _step(n, "Deployment version", "not matched")
    if call.get("deployment_id"):
        box.warning(f"The call ran on `{call['deployment_id']}` version {text(call.get('deployment_version'))}, "
                    "which has no governance record in the warehouse. " + REGISTER, icon=":material/help:")
    else:
        box.warning("No registered deployment matches the NIM that served this call (by Kubernetes "
                    "namespace/name, service name, host:port or served model name) as of its time. "
                    + REGISTER, icon=":material/help:")
