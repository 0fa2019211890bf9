"""Findings: every finding, one line per kind, deployment, tool and policy — the worst
first, then the most recently seen — and every finding of one group, each a step away
from its trace-back."""

import streamlit as st

from app import data, views

SEVERITIES = ["critical", "high", "medium", "low"]
GROUP_KEYS = ("kind", "deployment", "tool", "policy")

st.title("Findings")
st.caption("What the policy checks, the clock and the drift checks raised. Repeats of one kind on one "
           "deployment, tool and policy are one line with a count; the audit trail keeps every one.")

facets = views.load("filters", data.facets) or {}
c1, c2, c3 = st.columns(3)
with c1:
    kind = views.pick("Kind", [f["kind"] for f in facets.get("findings") or []], key="fi_kind")
with c2:
    severity = views.pick("Severity", SEVERITIES, key="fi_severity")
with c3:
    since, until = views.time_window("fi", default="last 7 days")

result = views.load("findings", data.findings, kind=kind, severity=severity, since=since, until=until,
                    limit=500)
if result is None:
    st.stop()
groups = result["rows"]
if not groups:
    views.stop_with_nothing_found("finding", "findings", bool(kind or severity or facets.get("findings")))

total = sum(g["count"] for g in groups)
st.caption(f"{total} finding(s) in {len(groups)} group(s)"
           + (" — more groups match: narrow the filters" if result.get("next_offset") is not None else ""))
views.finding_group_box(groups[0])  # the worst, most recent: what to look at first
st.dataframe([{
    "severity": g.get("severity"), "kind": g["kind"], "deployment": g.get("deployment"),
    "tool": g.get("tool"), "policy": g.get("policy"), "count": g["count"], "open": g.get("open"),
    # to the second: the table stays narrow enough to show the latest subjects at 1400 px
    "first seen (UTC)": views.when(g.get("first_seen"))[:19], "last seen (UTC)": views.when(g.get("last_seen"))[:19],
    "latest about": ", ".join(g["latest"].get("subject_ids") or []),
} for g in groups], hide_index=True, width="stretch", height=min(38 + 35 * len(groups), 420))

st.subheader("Every finding of one group")
labels = {i: f"{g['kind']} ({g.get('severity') or '?'}) × {g['count']} — {views.group_about(g)}"
          for i, g in enumerate(groups)}
chosen = groups[st.selectbox("Group", list(labels), format_func=labels.get, key="fi_group")]
each = views.load("the group's findings", data.findings, group="false", since=since, until=until,
                  severity=severity, limit=500, **{k: chosen.get(k) for k in GROUP_KEYS})
if each is None:
    st.stop()
# The API filters on what is named; a group without a tool or policy is told apart here.
members = [f for f in each["rows"] if all(f.get(k) == chosen.get(k) for k in GROUP_KEYS)]
st.dataframe([{
    "detected (UTC)": views.when(f.get("detected_at")), "severity": f.get("severity"),
    "about": ", ".join(f.get("subject_ids") or []),
    "status": (f.get("detail") or {}).get("status") if isinstance(f.get("detail"), dict) else None,
    "reason": (f.get("detail") or {}).get("reason") if isinstance(f.get("detail"), dict) else None,
    "finding id": f["finding_id"],
} for f in members], hide_index=True, width="stretch", height=min(38 + 35 * len(members), 420))
if each.get("next_offset") is not None:
    st.caption("The newest 500 are listed; `nimtrail findings --each` with the group's kind and "
               "deployment pages through the rest.")
subjects = list(dict.fromkeys(s for f in members for s in f.get("subject_ids") or []))
if subjects:
    subject = st.selectbox("Trace back from", subjects, key="fi_subject",
                           help="an action, tool call or model call id the finding is about")
    st.page_link("pages/trace_back.py", label="Open in Trace back", icon=":material/manage_search:",
                 query_params={"id": subject})
