"""Deployments: the inventory of registered NIM deployments, each one's versions and what
changed between them, and the drift and unknown-deployment findings."""

import streamlit as st

from app import data, views
from nimtrail.deployments.versions import leaf_changes

DRIFT_KINDS = {"deployment_drift": "Drift: a running NIM differs from its registered version",
               "unknown_deployment": "Unknown deployments: telemetry that matches no registered deployment"}

st.title("Deployments")
st.caption("The governance record of every NIM deployment: image, model, profile, GPUs, what it is "
           "for and who may call it. A change of any governed field is a new version.")

everything = views.load("deployments", data.deployments, versions="all", limit=1000)
if everything is None:
    st.stop()
records = everything["rows"]
if not records:
    st.info("No deployment is registered yet. " + views.REGISTER
            + " `nimtrail up --demo` registers its simulated fleet by itself.", icon=":material/inbox:")
else:
    latest: dict[str, dict] = {}
    for r in records:
        if r["deployment_id"] not in latest or r["version"] > latest[r["deployment_id"]]["version"]:
            latest[r["deployment_id"]] = r
    calls_by_deployment: dict[str, int] = {}
    for r in records:
        calls_by_deployment[r["deployment_id"]] = calls_by_deployment.get(r["deployment_id"], 0) + (r.get("calls") or 0)
    st.subheader("Inventory")
    st.dataframe([{
        "deployment": d["deployment_id"], "version": d["version"], "since (UTC)": views.when(d.get("valid_from")),
        "image": d.get("nim_image"), "model": d.get("model_id"), "profile": d.get("profile_name"),
        "engine": d.get("engine_backend"), "GPU": views.gpu(d), "purpose": d.get("purpose"),
        "tool calling allowed": d.get("tool_calling_allowed"),
        "allowed clients": ", ".join(d.get("allowed_clients") or []),
        "calls (all versions)": calls_by_deployment.get(d["deployment_id"], 0),
    } for d in latest.values()], hide_index=True, width="stretch")

    st.subheader("Versions")
    # The most recently changed first: that is usually the one someone is asking about.
    recent_first = sorted(latest, key=lambda d: latest[d].get("valid_from") or "", reverse=True)
    chosen = st.selectbox("Deployment", recent_first, key="dep_chosen",
                          format_func=lambda d: f"{d} ({latest[d]['version']} version"
                                                f"{'s' if latest[d]['version'] != 1 else ''})")
    history = sorted((r for r in records if r["deployment_id"] == chosen), key=lambda r: r["version"])
    for older, newer in zip([None, *history], history):
        title = (f"v{newer['version']} — from {views.when(newer.get('valid_from'))} — "
                 f"{newer.get('nim_image') or '?'} · {newer.get('profile_name') or '?'} · {views.gpu(newer)}"
                 f" — {newer.get('calls') or 0} call(s)")
        with st.expander(title, expanded=newer is history[-1]):
            if older is None:
                st.caption(f"First version (source: {newer.get('source') or '?'}).")
            else:
                changes = leaf_changes(older, newer)
                if changes:
                    st.markdown(f"**What changed from v{older['version']}:**")
                    st.dataframe([{"field": f, "before": views.text(a), "after": views.text(b)}
                                  for f, a, b in changes], hide_index=True, width="stretch")
                else:
                    st.caption("No governed field changed.")
            st.json({k: v for k, v in newer.items() if k != "calls"}, expanded=False)

st.subheader("Findings")
for kind, title in DRIFT_KINDS.items():
    found = views.load(f"{kind} findings", data.findings, kind=kind, limit=50)
    if found is None:
        continue
    st.markdown(f"**{title}**")
    if not found["rows"]:
        st.caption("None." if kind == "deployment_drift" else
                   "None: every NIM seen in telemetry matches a registered deployment.")
    for group in found["rows"]:  # one line per deployment (and identity), repeats counted
        views.finding_group_box(group)
