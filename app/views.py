"""What the pages share: loading with a spinner and errors as messages, time windows,
formatting, filters, and the empty states that say what to do."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, TypeVar

import orjson
import streamlit as st

from app.data import ApiError
from nimtrail import timestamps

T = TypeVar("T")
ANY = "(any)"
WINDOWS = {"last 15 minutes": dt.timedelta(minutes=15), "last hour": dt.timedelta(hours=1),
           "last 6 hours": dt.timedelta(hours=6), "last 24 hours": dt.timedelta(days=1),
           "last 7 days": dt.timedelta(days=7), "last 30 days": dt.timedelta(days=30),
           "all time": None, "custom range": None}
NO_DATA = ("Nothing has reached the warehouse yet. Start everything with `nimtrail up --demo` "
           "(a simulated NIM fleet, incident included), or point your agents' OpenTelemetry "
           "exporter at the collector (`OTEL_EXPORTER_OTLP_ENDPOINT=http://<host>:4318`).")
REGISTER = ("Register a deployment from its Helm values (and its governance file) with "
            "`nimtrail deployments register values.yaml governance.yaml --deployment ns/name`.")


def stop_with_nothing_found(one: str, many: str, filtered: bool) -> None:
    """A page with no rows says why — its filters, or nothing stored at all — and stops."""
    if filtered:
        st.info(f"No {one} matches these filters. Widen the time window or clear a filter.",
                icon=":material/filter_alt_off:")
    else:
        st.info(f"No {many} yet. " + NO_DATA, icon=":material/inbox:")
    st.stop()


def load(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run one data call under a spinner; an API error becomes a message on the page (and
    None), never a traceback."""
    try:
        with st.spinner(f"Loading {what}…"):
            return fn(*args, **kwargs)
    except ApiError as e:
        st.error(f"Could not load {what}: {e}", icon=":material/error:")
        if e.status is None:  # nothing answered: the rest of the page cannot load either
            st.stop()
        if e.status in (401, 403):
            st.caption("The app reads with the token in `NIMTRAIL_TOKEN` (set before `nimtrail app`); "
                       "ask for a token whose role may run this query (see docs/warehouse.md, "
                       "Access control).")
        return None


def iso(value: dt.datetime) -> str:
    return timestamps.iso(value.astimezone(dt.timezone.utc))


def time_window(key: str, default: str = "last 24 hours",
                extra: dict[str, tuple[str | None, str | None]] | None = None) -> tuple[str | None, str | None]:
    """A time-window picker: (since, until) as ISO-8601 UTC, None for open ends. `since` is
    rounded down to the minute so that reruns within a minute hit the cache. `extra`: named
    windows a page offers first (a page's own default, such as one around an event)."""
    extra = extra or {}
    names = [*extra, *WINDOWS]
    choice = st.selectbox("Time", names, index=names.index(default), key=f"{key}_window")
    if choice in extra:
        return extra[choice]
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    if choice == "custom range":
        today = now.date()
        picked = st.date_input("From – to (UTC)", (today - dt.timedelta(days=7), today),
                               key=f"{key}_range")
        if isinstance(picked, (tuple, list)) and len(picked) == 2:
            start = dt.datetime.combine(picked[0], dt.time(), dt.timezone.utc)
            end = dt.datetime.combine(picked[1], dt.time(), dt.timezone.utc) + dt.timedelta(days=1)
            return iso(start), iso(end)
        return None, None
    span = WINDOWS[choice]
    return (iso(now - span) if span else None), None


def pick(label: str, options: list[str] | None, key: str) -> str | None:
    """A filter select box with an "(any)" first choice; None when any."""
    choice = st.selectbox(label, [ANY, *(options or [])], key=key)
    return None if choice == ANY else choice


def when(value: Any) -> str:
    """An API timestamp (ISO-8601, microseconds, Z) for people: to the millisecond, UTC."""
    if not value:
        return "–"
    text = str(value).replace("T", " ").rstrip("Z")
    return text[:23] if "." in text else text


def text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):,.1f} ms"


def short(value: str | None, keep: int = 16) -> str:
    if not value:
        return "–"
    return value if len(value) <= keep else value[:keep] + "…"


def gpu(deployment: dict[str, Any] | None) -> str:
    if not deployment:
        return "–"
    count, kind = deployment.get("gpu_count"), deployment.get("gpu_type")
    if not kind:
        return "–"
    return f"{count}× {kind}" if count else str(kind)


def deployment_label(row: dict[str, Any]) -> str:
    if not row.get("deployment_id"):
        return "–"
    version = row.get("deployment_version")
    return f"{row['deployment_id']} v{version}" if version is not None else row["deployment_id"]


SEVERITY_ICON = {"critical": ":material/dangerous:", "high": ":material/error:",
                 "medium": ":material/warning:", "low": ":material/info:"}


def _severity_alert(severity: str | None, body: str, detail: Any, detail_label: str) -> None:
    """An alert whose colour and icon follow a severity, with the detail folded away."""
    severity = (severity or "").lower()
    show = {"critical": st.error, "high": st.error, "medium": st.warning}.get(severity, st.info)
    show(body, icon=SEVERITY_ICON.get(severity, ":material/info:"))
    if detail:
        with st.expander(detail_label, expanded=False):
            st.json(detail)


def _reason(detail: Any) -> str:
    if isinstance(detail, dict) and (detail.get("reason") or detail.get("message")):
        return f"  \n{detail.get('reason') or detail.get('message')}"
    return ""


def _subjects(finding: dict[str, Any]) -> str:
    return ", ".join(f"`{s}`" for s in finding.get("subject_ids") or []) or "–"


def finding_box(finding: dict[str, Any]) -> None:
    """One finding as an alert whose colour follows its severity."""
    severity = finding.get("severity")
    body = (f"**{finding.get('kind')}** ({severity or 'no severity'}) — detected {when(finding.get('detected_at'))}"
            f"  \nsubjects: {_subjects(finding)}" + _reason(finding.get("detail")))
    _severity_alert(severity, body, finding.get("detail"), "detail")


def group_about(group: dict[str, Any]) -> str:
    """What a group of findings is about: its deployment, tool and policy, where known."""
    parts = [group.get("deployment") or "no deployment"]
    if group.get("tool"):
        parts.append(f"tool {group['tool']}")
    if group.get("policy"):
        parts.append(f"policy {group['policy']}")
    return " · ".join(parts)


def finding_group_box(group: dict[str, Any]) -> None:
    """A group of findings (one kind, deployment, tool and policy) as one alert: how many,
    first and last seen, and the latest one's subjects (where trace-back starts)."""
    latest = group.get("latest") or {}
    count, still_open = group.get("count") or 0, group.get("open") or 0
    opened = "" if still_open == count else f", {still_open} open"
    body = (f"**{group.get('kind')}** ({group.get('severity') or 'no severity'}) × **{count}**{opened} — "
            f"{group_about(group)}  \nfirst seen {when(group.get('first_seen'))}, "
            f"last seen {when(group.get('last_seen'))}; latest about {_subjects(latest)}"
            + _reason(latest.get("detail")))
    _severity_alert(group.get("severity"), body, latest.get("detail"), "latest finding's detail")


def id_from_url(label: str, param: str, hint: str, icon: str, placeholder: str = "") -> str:
    """A page's one id: typed, or given in the URL (`?param=`), which then carries it so the
    page can be shared. Without one, `hint` says where to find one and the page stops."""
    key = f"id_{param}"
    if key not in st.session_state:
        st.session_state[key] = st.query_params.get(param, "")
    value = st.text_input(label, key=key, placeholder=placeholder).strip()
    if not value:
        st.info(hint, icon=icon)
        st.stop()
    st.query_params.from_dict({param: value})
    return value
