"""Latency by GPU profile: TTFT, end-to-end and queue percentiles over time by GPU type and
profile, deployment version or model, with each deployment version's start marked on the
time axis, the GPUs' utilisation, memory and KV-cache usage on the same axis, and the
change at every upgrade."""

import datetime as dt

import altair as alt
import pandas as pd
import streamlit as st

from app import latency_charts as charts
from app import data, views

GROUPS = {"GPU profile": "profile", "deployment version": "deployment", "model": "model"}
METRICS = {"TTFT": "ttft_ms", "end-to-end": "e2e_ms", "queue": "queue_ms"}
AUTO_BUCKET = {"last 15 minutes": "10s", "last hour": "1m", "last 6 hours": "5m", "last 24 hours": "15m",
               "last 7 days": "1h", "last 30 days": "6h", "all time": "1h", "custom range": "1h"}
AROUND = "around the latest change"
CHANGES_SHOWN = 4  # the newest changes as cards; the rest in a table under them
# What the GPUs were doing: gpu-metrics column -> (chart title, y-axis title)
GPU_SERIES = {"gpu_util_pct": ("GPU utilisation", "GPU util (%)"),
              "gpu_memory_used_gib": ("GPU memory used", "memory (GiB/GPU)"),
              "kv_cache_usage_pct": ("KV-cache usage", "KV cache (%)")}


def group_label(row: dict, by: str) -> str:
    if by == "profile":
        if not row.get("gpu_type") and not row.get("profile_name"):
            return "unregistered deployment"
        return f"{row.get('gpu_type') or '?'} · {row.get('profile_name') or '?'}"
    if by == "deployment":
        return views.deployment_label(row) if row.get("deployment_id") else "unmatched"
    return row.get("model") or "?"


def latest_change(versions: list[dict]) -> dt.datetime | None:
    """When the newest version that replaced another took effect."""
    times = [v["valid_from"] for v in versions if v.get("valid_from") and (v.get("version") or 0) > 1]
    return pd.Timestamp(max(times)).to_pydatetime() if times else None


def ms_delta(change: dict, name: str) -> tuple[str, str | None]:
    after, before, pct = (change.get(f"{name}_{k}") for k in ("after", "before", "change_pct"))
    return views.ms(after), (None if pct is None else f"{pct:+.1f}% (was {views.ms(before)})")


st.title("Latency by GPU profile")
st.caption("Percentiles from the calls themselves where NIM reported timings, estimated from the "
           "NIM/vLLM histograms otherwise. Dashed lines mark when a deployment version took effect. "
           "Times are UTC.")

facets = views.load("filters", data.facets) or {}
every_version = views.load("deployment versions", data.deployments, versions="all", limit=1000) or {"rows": []}
now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
changed_at = latest_change(every_version["rows"])
framed = {}
if changed_at is not None:
    framed_start, framed_end = charts.around(changed_at, now)
    framed = {AROUND: (views.iso(framed_start), views.iso(framed_end))}
c1, c2, c3, c4 = st.columns(4)
with c1:
    by = GROUPS[st.selectbox("Group by", list(GROUPS), key="lat_by")]
with c2:
    metric_name = st.selectbox("Latency", list(METRICS), key="lat_metric")
    metric = METRICS[metric_name]
with c3:
    quantile = st.selectbox("Percentile", ["p50", "p90", "p95", "p99"], index=2, key="lat_q")
with c4:
    since, until = views.time_window("lat", default=AROUND if framed else "last hour", extra=framed)
c1, c2, c3, c4, c5 = st.columns(5)
with c1:
    bucket_choice = st.selectbox("Bucket", ["auto", *charts.BUCKET_SPAN], key="lat_bucket")
    window = st.session_state["lat_window"]
    if bucket_choice != "auto":
        bucket = bucket_choice
    elif window == AROUND:
        bucket = charts.auto_bucket(framed_end - framed_start)
    else:
        bucket = AUTO_BUCKET[window]
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

frame = pd.DataFrame([{"time": r["bucket_start"], "when": f"{views.when(r['bucket_start'])} UTC",
                       "group": group_label(r, by), "value": r[f"{metric}_{quantile}"], "calls": r.get("calls"),
                       "n": r.get(f"{metric}_n"), "source": r.get(f"{metric}_source")} for r in rows])
frame["time"] = pd.to_datetime(frame["time"], utc=True)
start = frame["time"].min()
end = frame["time"].max() + pd.Timedelta(charts.BUCKET_SPAN[bucket])
x = charts.time_axis(start, end, f"time (UTC, 24-hour), {bucket} buckets")
gpus = views.load("GPU metrics over time", data.gpu_metrics, by=by, bucket=bucket, **filters)
gpu_rows = gpus["rows"] if gpus else []
# One colour per group on every chart; the legend under the latency chart is theirs too.
palette = alt.Scale(domain=sorted(set(frame["group"]) | {group_label(r, by) for r in gpu_rows}))
color = alt.Color("group:N", title=None, scale=palette,
                  legend=alt.Legend(orient="bottom", columns=2, labelLimit=420))
versions = views.load("deployment versions", data.deployments, versions="all", deployment_id=deployment,
                      model=model, gpu_type=gpu_type, profile_name=profile, limit=1000)
marks = charts.change_marks(versions["rows"] if versions else [], start, end)
lanes = charts.lanes_height(marks)
height = 380
# Room above the highest point for the marker labels' lanes.
top = float(frame["value"].max()) * height / max(height - lanes - 8, 1)
lines = alt.Chart(frame).mark_line(point=True, clip=True).encode(
    x=x, y=charts.y_axis("value:Q", f"{metric_name} {quantile} (ms)", domain=[0, top], nice=False), color=color,
    tooltip=["group", alt.Tooltip("when", title="bucket from"),
             alt.Tooltip("value:Q", format=",.1f", title=f"{quantile} ms"), "n", "source"])
chart = lines if marks.empty else alt.layer(lines, charts.change_rules(marks, x), charts.change_labels(marks, x))
st.altair_chart(charts.svg(chart, height), width="stretch")

changes = views.load("latency at each deployment change", data.latency_changes, **filters)
if changes is not None:
    st.subheader("At each deployment change")
    if not changes["rows"]:
        st.caption("No deployment version took effect in this window.")
    for change in changes["rows"][:CHANGES_SHOWN]:
        before, after = change["before"], change["after"]
        what = [f"{field.replace('_', ' ')} {views.text(before[field])} → {views.text(after[field])}"
                for field in change["changed"]]
        with st.container(border=True):
            st.markdown(f"**{change['deployment_id']} v{change['from_version']} → v{change['to_version']}** "
                        f"from {views.when(change['changed_at'])} UTC · calls {change['calls_before']} → "
                        f"{change['calls_after']}  \n" + (" · ".join(what) or "no change to image, profile or GPU"))
            cells = st.columns(3)
            for cell, q in zip(cells, ("p50", "p95", "p99")):
                value, delta = ms_delta(change, f"{metric}_{q}")
                cell.metric(f"{metric_name} {q} after", value, delta, delta_color="inverse")
    older = changes["rows"][CHANGES_SHOWN:]
    if older:
        with st.expander(f"{len(older)} earlier changes"):
            st.dataframe([{"deployment": c["deployment_id"], "versions": f"v{c['from_version']} → v{c['to_version']}",
                           "from (UTC)": views.when(c["changed_at"]),
                           **{f"{q} before → after (ms)": f"{views.ms(c[f'{metric}_{q}_before'])} → "
                                                          f"{views.ms(c[f'{metric}_{q}_after'])}"
                              for q in ("p50", "p95", "p99")},
                           "p95 change": c[f"{metric}_p95_change_pct"]} for c in older],
                         hide_index=True, width="stretch")

if gpus is not None:
    st.subheader("What the GPUs were doing")
    samples = pd.DataFrame([{"time": r["bucket_start"], "when": f"{views.when(r['bucket_start'])} UTC",
                             "group": group_label(r, by), "gpu_util_pct": r.get("gpu_util_pct"),
                             "gpu_memory_used_gib": (None if r.get("gpu_memory_used_mib") is None
                                                     else r["gpu_memory_used_mib"] / 1024),
                             "kv_cache_usage_pct": r.get("kv_cache_usage_pct")} for r in gpu_rows])
    if samples.empty:
        st.caption("No DCGM or KV-cache samples in this window: the collector scrapes them from each NIM's "
                   "`/v1/metrics` and the DCGM exporter's `/metrics` (docs/collector.md).")
    else:
        samples["time"] = pd.to_datetime(samples["time"], utc=True)
        gpu_x = charts.time_axis(start, end, None)  # the latency chart's axis, its title said once
        for column, (title, axis) in GPU_SERIES.items():
            shown = samples.dropna(subset=[column])
            if shown.empty:
                st.caption(f"{title}: no samples in this window.")
                continue
            part = alt.Chart(shown).mark_line(point=True, clip=True).encode(
                x=gpu_x, y=charts.y_axis(f"{column}:Q", axis), color=alt.Color("group:N", scale=palette, legend=None),
                tooltip=["group", alt.Tooltip("when", title="bucket from"),
                         alt.Tooltip(f"{column}:Q", format=",.1f", title=axis)])
            layered = part if marks.empty else alt.layer(part, charts.change_rules(marks, gpu_x))
            # The height holds title and axis too (Streamlit fits the whole chart into it).
            st.altair_chart(charts.svg(layered.properties(title=title), 230), width="stretch")

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
