"""A trace's waterfall: one bar per audited span on the trace's own time axis (milliseconds
from its first span), indented by depth, coloured by role.

`chart(nodes)` takes the `rows` of a `trace` answer as the query API gives them."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

ROLE_LABELS = {"agent": "agent", "model_call": "model call", "nim_server": "NIM server",
               "tool": "tool", "mcp_client": "MCP client", "mcp_server": "MCP server"}
ROLE_ORDER = list(ROLE_LABELS.values())
# Room for the indented span names at 1400 px, leaving most of the width to the bars.
LABEL_WIDTH = 420
INDENT = "\u00a0" * 4


def label(node: dict[str, Any]) -> str:
    """A span as one line: indented by depth, role, name, and service."""
    role = ROLE_LABELS.get(node.get("role") or "", node.get("role") or "span")
    name = node.get("name") or node["span_id"]
    service = f" · {node['service']}" if node.get("service") else ""
    # No-break spaces: chart labels trim ordinary leading spaces, and the indent is the tree.
    return f"{INDENT * node.get('depth', 0)}{role}: {name}{service}"


def chart(nodes: list[dict[str, Any]]) -> alt.Chart | None:
    rows = []
    for i, node in enumerate(nodes):
        start = node.get("offset_ms")
        if start is None:
            continue
        duration = node.get("duration_ms") or 0.0
        rows.append({"order": i, "span": f"{i + 1:>3}. {label(node)}",
                     "role": ROLE_LABELS.get(node.get("role"), "span"),
                     "start": start, "end": start + max(duration, 0.0), "duration_ms": duration,
                     "span_id": node["span_id"]})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar(cornerRadius=2, height=16).encode(
        x=alt.X("start:Q", title="ms from the trace's first span"),
        x2="end:Q",
        y=alt.Y("span:N", sort=list(frame["span"]), title=None,
                # Left-aligned in a fixed gutter, so that the indent shows the depth.
                axis=alt.Axis(labelLimit=LABEL_WIDTH, labelFontSize=12, labelAlign="left",
                              labelPadding=LABEL_WIDTH)),
        color=alt.Color("role:N", scale=alt.Scale(domain=ROLE_ORDER), legend=alt.Legend(orient="top", title=None)),
        tooltip=["span", "role", alt.Tooltip("start:Q", title="offset ms", format=",.1f"),
                 alt.Tooltip("duration_ms:Q", format=",.1f"), "span_id"],
    ).properties(height=alt.Step(26))
