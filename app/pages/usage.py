"""Usage: calls, tokens and GPU-seconds per caller, deployment or model over a time window,
each group's share, and the calls whose GPU time could not be priced."""

import altair as alt
import pandas as pd
import streamlit as st

from app import data, views

GROUPS = {"caller": ("caller", "unknown caller"), "deployment": ("deployment_id", "no deployment"),
          "model": ("model", "unknown model")}
MEASURES = {"GPU-seconds": ("gpu_seconds", "gpu_share"), "tokens": ("total_tokens", "token_share"),
            "calls": ("calls", "call_share")}
REASONS = {"no_deployment": "matched to no registered deployment version",
           "no_gpu_count": "their deployment version states no GPU count",
           "no_duration": "no duration was reported"}
CHART_GROUPS = 20  # more bars than this stop being readable; the table lists every group

st.title("Usage")
st.caption("Who uses how much: calls, input and output tokens, and GPU-seconds (each call's duration × "
           "the GPU count of the deployment version that served it), per caller, deployment or model.")

facets = views.load("filters", data.facets) or {}
c1, c2, c3 = st.columns(3)
with c1:
    by = st.selectbox("Group by", list(GROUPS), key="usage_by")
with c2:
    measure = st.selectbox("Chart", list(MEASURES), key="usage_measure")
with c3:
    since, until = views.time_window("usage", default="last 24 hours")

result = views.load("usage", data.usage, by=by, since=since, until=until, limit=1000)
if result is None:
    st.stop()
column, nobody = GROUPS[by]
if not result["rows"]:
    views.stop_with_nothing_found("model call", "model calls", bool(facets.get("models") or facets.get("callers")))

totals, unattributed = result["totals"], result["unattributed"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Calls", f"{totals['calls']:,}")
m2.metric("Tokens", f"{totals['total_tokens']:,}",
          help=f"{totals['input_tokens']:,} input, {totals['output_tokens']:,} output")
m3.metric("GPU-seconds", "–" if totals["gpu_seconds"] is None else f"{totals['gpu_seconds']:,.1f}")
m4.metric("Unattributed calls", f"{unattributed['calls']:,}",
          help="calls counted with 0 GPU-seconds because their GPU time cannot be priced")
if unattributed["calls"]:
    why = "; ".join(f"{unattributed[r]:,} {text}" for r, text in REASONS.items() if unattributed[r])
    st.warning(f"{unattributed['calls']:,} call(s), {unattributed['call_seconds'] or 0:,.1f} call-seconds, count "
               f"0 GPU-seconds: {why}. Their calls and tokens are counted. " + views.REGISTER,
               icon=":material/help:")

figure, share = MEASURES[measure]
frame = pd.DataFrame([{"group": r[column] if r[column] not in (None, "") else nobody, "value": r[figure] or 0,
                       "share": r[share], "calls": r["calls"], "tokens": r["total_tokens"],
                       "GPU-seconds": r["gpu_seconds"]} for r in result["rows"]])
frame = frame.sort_values("value", ascending=False).head(CHART_GROUPS)
bars = alt.Chart(frame).mark_bar().encode(
    x=alt.X("value:Q", title=measure),
    y=alt.Y("group:N", title=None, sort="-x", axis=alt.Axis(labelLimit=420)),
    tooltip=["group", alt.Tooltip("value:Q", title=measure, format=",.1f"),
             alt.Tooltip("share:Q", format=".1%"), "calls", "tokens",
             alt.Tooltip("GPU-seconds:Q", format=",.1f")])
st.subheader(f"{measure} by {by}" + (f" (the {CHART_GROUPS} largest)" if result["groups"] > CHART_GROUPS else ""))
st.altair_chart(bars.properties(height=40 + 28 * len(frame)), width="stretch")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


st.subheader(f"Every {by}")
st.dataframe([{
    by: r[column] if r[column] not in (None, "") else nobody, "calls": r["calls"],
    "input tokens": r["input_tokens"], "output tokens": r["output_tokens"], "tokens": r["total_tokens"],
    "GPU-seconds": None if r["gpu_seconds"] is None else round(r["gpu_seconds"], 1),
    "unattributed calls": r["unattributed_calls"],
    "share of calls": _percent(r["call_share"]), "share of tokens": _percent(r["token_share"]),
    "share of GPU-seconds": _percent(r["gpu_share"]),
} for r in result["rows"]], hide_index=True, width="stretch")
if result.get("next_offset") is not None:
    st.caption(f"The first 1,000 of {result['groups']:,} groups; the totals above cover them all.")
st.caption("GPU-seconds: each call's end-to-end time as NIM reported it (else the client's), times the "
           "GPU count of the deployment version that served it. Shares are of the whole time window.")
