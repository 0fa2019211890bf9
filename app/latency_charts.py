"""The latency page's charts: one UTC time axis shared by every chart, deployment-change
markers whose labels never overlap, and the window and bucket that frame the latest change.

Every chart is drawn as SVG (not canvas), so that its labels are elements a reader's
browser, and a test, can find and measure.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import altair as alt
import pandas as pd

from app import views

SVG = {"embedOptions": {"renderer": "svg"}}
# Bucket -> its length (pandas), in the order the page offers them.
BUCKET_SPAN = {"10s": "10s", "30s": "30s", "1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "6h": "6h",
               "1d": "1D"}
MOST_BUCKETS = 120  # points per line the auto bucket aims below
Y_AXIS_WIDTH = 64  # every chart's y axis takes the same room, so their time axes line up
# Marker labels: the narrowest plot they are laid out for (wider plots only spread them
# further apart), and the width of one character of their 11 px font.
NARROWEST_PLOT_PX = 640
CHAR_PX = 7.0
LANE_PX = 15
MIN_HALF_WINDOW = dt.timedelta(minutes=10)
MAX_HALF_WINDOW = dt.timedelta(days=15)
CHANGE_COLOR = "#d62728"


def auto_bucket(span: dt.timedelta) -> str:
    """The shortest bucket that draws `span` in at most MOST_BUCKETS points."""
    for name, length in BUCKET_SPAN.items():
        if span / pd.Timedelta(length).to_pytimedelta() <= MOST_BUCKETS:
            return name
    return "1d"


def around(change_at: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """A window with `change_at` in its middle and as much before it as has passed since
    (at least ten minutes each side, at most fifteen days): the old version's latency
    next to the new one's."""
    half = min(max(now - change_at, MIN_HALF_WINDOW), MAX_HALF_WINDOW)
    return change_at - half, change_at + half


def time_axis(start: pd.Timestamp, end: pd.Timestamp, title: str | None) -> alt.X:
    """Time in UTC, 24-hour labels (a date too when the range spans days), whatever zone
    the browser is in."""
    fmt = "%H:%M" if end - start <= pd.Timedelta(days=1) else "%d %b %H:%M"
    if end - start <= pd.Timedelta(minutes=10):
        fmt = "%H:%M:%S"
    return alt.X("time:T", title=title, scale=alt.Scale(type="utc", domain=[start.isoformat(), end.isoformat()]),
                 axis=alt.Axis(format=fmt, labelOverlap=True, labelFlush=True))


def y_axis(field: str, title: str, **scale: Any) -> alt.Y:
    return alt.Y(field, title=title, scale=alt.Scale(**scale) if scale else alt.Undefined,
                 axis=alt.Axis(minExtent=Y_AXIS_WIDTH, maxExtent=Y_AXIS_WIDTH))


def change_marks(versions: list[dict[str, Any]], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The deployment versions that took effect in [start, end], each with its label's
    lane: labels that would touch on the narrowest plot go to different lanes."""
    marks = pd.DataFrame([{"time": v["valid_from"], "when": f"{views.when(v['valid_from'])} UTC",
                           "label": f"{v['deployment_id']} v{v['version']}",
                           "detail": f"{v.get('nim_image') or '?'} · {v.get('profile_name') or '?'} · {views.gpu(v)}"}
                          for v in versions if v.get("valid_from")])
    if marks.empty:
        return marks
    marks["time"] = pd.to_datetime(marks["time"], utc=True)
    marks = marks[(marks["time"] >= start) & (marks["time"] <= end)].sort_values(["time", "label"])
    if marks.empty:
        return marks
    per_px = (end - start) / NARROWEST_PLOT_PX
    lanes_end: list[pd.Timestamp] = []
    lanes, aligns = [], []
    for time, label in zip(marks["time"], marks["label"]):
        width = per_px * (CHAR_PX * len(label) + 8)
        # A label that would run past the end of the axis is drawn to the left of its line.
        left, right, align = (time - width, time, "right") if time + width > end else (time, time + width, "left")
        lane = next((i for i, busy_until in enumerate(lanes_end) if busy_until < left), len(lanes_end))
        if lane == len(lanes_end):
            lanes_end.append(right)
        else:
            lanes_end[lane] = right
        lanes.append(lane)
        aligns.append(align)
    marks["lane"], marks["align"] = lanes, aligns
    marks["y"] = 4 + LANE_PX * marks["lane"]
    return marks


def change_rules(marks: pd.DataFrame, x: alt.X) -> alt.Chart:
    """A dashed line at each change (hover: what took effect), for every chart."""
    return alt.Chart(marks).mark_rule(strokeDash=[6, 4], color=CHANGE_COLOR).encode(
        x=x, tooltip=[alt.Tooltip("label", title="version"), alt.Tooltip("when", title="from"),
                      alt.Tooltip("detail", title="image · profile · GPU")])


def change_labels(marks: pd.DataFrame, x: alt.X) -> alt.LayerChart:
    """The labels of the changes, in their lanes at the top of the plot."""
    layers = [alt.Chart(marks[marks["align"] == align]).mark_text(
                  align=align, dx=4 if align == "left" else -4, baseline="top", color=CHANGE_COLOR, fontSize=11)
              .encode(x=x, y=alt.Y("y:Q", scale=None), text="label",
                      tooltip=[alt.Tooltip("label", title="version"), alt.Tooltip("when", title="from"),
                               alt.Tooltip("detail", title="image · profile · GPU")])
              for align in ("left", "right") if (marks["align"] == align).any()]
    return alt.layer(*layers).properties(name="change_labels")


def lanes_height(marks: pd.DataFrame) -> int:
    return 0 if marks.empty else 4 + LANE_PX * (int(marks["lane"].max()) + 1)


def svg(chart: alt.TopLevelMixin, height: int) -> alt.TopLevelMixin:
    return chart.properties(height=height, usermeta=SVG)
