"""Latency by GPU profile: TTFT, end-to-end and queue percentiles over time by GPU type and
profile, deployment version or model, with each deployment version's start marked on the
time axis, and the change at every upgrade."""

import altair as alt
import pandas as pd
import streamlit as st

from app import data, views

GROUPS = {"GPU profile": "profile", "deployment version": "deployment", "model": "model"}
METRICS = {"TTFT": "ttft_ms", "end-to-end": "e2e_ms", "queue": "queue_ms"}
AUTO_BUCKET = {"last 15 minutes": "10s", "last hour": "1m", "last 6 hours": "5m", "last 24 hours": "15m",
               "last 7 days": "1h", "last 30 days": "6h", "all time": "1h", "custom range": "1h"}
BUCKET_SPAN = {"10s": "10s", "30s": "30s", "1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "6h": "6h",
               "1d": "1D"}


def group_label(row: dict, by: str) -> str:
    if by == "profile":
        if not row.get("gpu_type") and not row.get("profile_name"):
            return "unregistered deployment"
        return f"{row.get('gpu_type') or '?'} · {row.get('profile_name') or '?'}"
    if by == "deployment":
        return views.deployment_label(row) if row.get("deployment_id") else "unmatched"
    return row.get("model") or "?"


st.title("Latency by GPU profile")
st.caption("Percentiles from the calls themselves where NIM reported timings, estimated from the "
           "NIM/vLLM histograms otherwise. Dashed lines mark when a deployment version took effect.")

facets = views.load("filters", data.facets) or {}
c1, c2, c3, c4 = st.columns(4)
with c1:
    by = GROUPS[st.selectbox("Group by", list(GROUPS), key="lat_by")]
with c2:
    metric_name = st.selectbox("Latency", list(METRICS), key="lat_metric")
    metric = METRICS[metric_name]
with c3:
    quantile = st.selectbox("Percentile", ["p50", "p90", "p95", "p99"], index=2, key="lat_q")
with c4:
    since, until = views.time_window("lat", default="last hour")
c1, c2, c3, c4, c5 = st.columns(5)
with c1:
    bucket_choice = st.selectbox("Bucket", ["auto", *BUCKET_SPAN], key="lat_bucket")
    bucket = AUTO_BUCKET[st.session_state["lat_window"]] if bucket_choice == "auto" else bucket_choice
with c2:
    gpu_type = views.pick("GPU type", facets.get("gpu_types"), key="lat_gpu")
with c3:
    profile = views.pick("Profile", facets.get("profiles"), key="lat_profile")
with c4:
    model = views.pick("Model", facets.get("models"), key="lat_model")
with c5:
    deployment = views.pick("Deployment", facets.get("deployments"), key="lat_deployment")

filters = dict(since=since, until=until, gpu_type=gpu_type, profile_name=profile, model=model,
               deployment_id=deployment)
series = views.load("latency over time", data.latency, by=by, bucket=bucket, **filters)
if series is None:
    st.stop()
rows = [r for r in series["rows"] if r.get(f"{metric}_{quantile}") is not None]
if series.get("precision") == "estimate":
    st.caption(f"Over this many calls the percentiles are estimated from hourly and daily histograms of the calls "
               f"(source `calls_histogram`): within {series['relative_error']:.1%} of the exact value.")
if not rows:
    if series["rows"]:
        st.info(f"No {metric_name} timings in this window: the calls carry none (NIM tracing off?) "
                "and no latency histograms were scraped. Try another latency or a wider window.")
        st.stop()
    views.stop_with_nothing_found("model call", "model calls", bool(facets.get("models")))
if by == "profile" and all(group_label(r, by) == "unregistered deployment" for r in rows):
    st.warning("No call is matched to a registered deployment, so there is no GPU profile to group by. "
               + views.REGISTER, icon=":material/help:")

frame = pd.DataFrame([{"time": r["bucket_start"], "group": group_label(r, by), "value": r[f"{metric}_{quantile}"],
                       "calls": r.get("calls"), "n": r.get(f"{metric}_n"), "source": r.get(f"{metric}_source")}
                      for r in rows])
frame["time"] = pd.to_datetime(frame["time"], utc=True)
start = frame["time"].min()
end = frame["time"].max() + pd.Timedelta(BUCKET_SPAN[bucket])
lines = alt.Chart(frame).mark_line(point=True).encode(
    x=alt.X("time:T", title=f"time (UTC), {bucket} buckets",
            scale=alt.Scale(domain=[start.isoformat(), end.isoformat()])),
    y=alt.Y("value:Q", title=f"{metric_name} {quantile} (ms)"),
    color=alt.Color("group:N", title=None, legend=alt.Legend(orient="bottom", columns=2, labelLimit=420)),
    tooltip=["group", "time:T", alt.Tooltip("value:Q", format=",.1f", title=f"{quantile} ms"), "n", "source"])
chart = lines

versions = views.load("deployment versions", data.deployments, versions="all", deployment_id=deployment,
                      model=model, gpu_type=gpu_type, profile_name=profile, limit=1000)
if versions and versions["rows"]:
    marks = pd.DataFrame([{"time": v["valid_from"],
                           "label": f"{v['deployment_id']} v{v['version']}",
                           "detail": f"{v.get('nim_image') or '?'} · {v.get('profile_name') or '?'} · "
                                     f"{views.gpu(v)}"}
                          for v in versions["rows"] if v.get("valid_from")])
    if not marks.empty:
        marks["time"] = pd.to_datetime(marks["time"], utc=True)
        marks = marks[(marks["time"] >= start) & (marks["time"] <= end)]
    if not marks.empty:
        rules = alt.Chart(marks).mark_rule(strokeDash=[6, 4], color="#d62728").encode(
            x="time:T", tooltip=["label", "detail", "time:T"])
        texts = alt.Chart(marks).mark_text(align="right", dx=-4, color="#d62728", fontSize=11,
                                           baseline="top").encode(
            x="time:T", y=alt.value(4), text="label")
        chart = lines + rules + texts
st.altair_chart(chart.properties(height=380), width="stretch")

summary = views.load("latency summary", data.latency, by=by, bucket="none", **filters)
if summary and summary["rows"]:
    st.subheader(f"Over the whole window, by {next(k for k, v in GROUPS.items() if v == by)}")
    table = []
    for r in summary["rows"]:
        row = {"group": group_label(r, by), "calls": r.get("calls")}
        for name, m in METRICS.items():
            for q in ("p50", "p95", "p99"):
                row[f"{name} {q}"] = r.get(f"{m}_{q}")
            row[f"{name} from"] = r.get(f"{m}_source")
        table.append(row)
    st.dataframe(table, hide_index=True, width="stretch")

by_version = views.load("latency per deployment version", data.latency, by="deployment", bucket="none",
                        **filters)
if by_version:
    per: dict[str, list[dict]] = {}
    for r in by_version["rows"]:
        if r.get("deployment_id") and r.get("deployment_version") is not None:
            per.setdefault(r["deployment_id"], []).append(r)
    changes = []
    for deployment_id, found in sorted(per.items()):
        found.sort(key=lambda r: r["deployment_version"])
        for before, after in zip(found, found[1:]):
            old, new = before.get(f"{metric}_{quantile}"), after.get(f"{metric}_{quantile}")
            changes.append({"deployment": deployment_id,
                            "versions": f"v{before['deployment_version']} → v{after['deployment_version']}",
                            "image after": after.get("nim_image"), "profile after": after.get("profile_name"),
                            f"{metric_name} {quantile} before (ms)": old, f"{metric_name} {quantile} after (ms)": new,
                            "change": (f"{(new - old) / old:+.0%}" if old and new is not None else "–")})
    if changes:
        st.subheader("At each deployment change")
        st.dataframe(changes, hide_index=True, width="stretch")
