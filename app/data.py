"""All of the app's data access: the warehouse query API, results cached briefly.

Every read goes through the query API (the warehouse owns the DuckDB file), with the token
from NIMTRAIL_TOKEN (or the file NIMTRAIL_TOKEN_FILE names); the API decides what the
token's role may see and logs each read. Behind an authenticating proxy (`app.trusted_proxy`)
each request also passes on the person the proxy named, so the access log says who clicked.
Functions raise `ApiError` (unreachable API, refused token, bad parameter) for the pages
to show; errors are never cached. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from nimtrail import api_client
from nimtrail.api_client import ApiError
from nimtrail.people import person_from

DEFAULT_API = "http://127.0.0.1:8700"
TIMEOUT = 60.0

__all__ = ["ApiError", "api_url", "query", "actions", "trace", "trace_back", "trace_waterfall", "session", "calls",
           "facets", "latency", "latency_changes", "gpu_metrics", "usage", "deployments", "findings", "holds",
           "retention_report", "verify",
           "access_log", "export", "export_lookup", "person", "clear"]


def api_url() -> str:
    return os.environ.get("NIMTRAIL_API") or DEFAULT_API


def _token() -> str | None:
    """$NIMTRAIL_TOKEN, else the file $NIMTRAIL_TOKEN_FILE names (a mounted secret)."""
    return api_client.env_token()


def _person() -> tuple[tuple[str, str], ...]:
    """The header naming the person behind this browser session, to pass on: () unless
    `nimtrail app` runs behind a trusted proxy (it then sets NIMTRAIL_PERSON_HEADERS from
    app.person_headers, and app.address is loopback: only the proxy reaches the app)."""
    names = [n for n in os.environ.get("NIMTRAIL_PERSON_HEADERS", "").split(",") if n]
    if not names:
        return ()
    found = person_from(st.context.headers.to_dict(), names)
    return (found,) if found else ()


def person() -> str | None:
    """Who the proxy says is using the app, if it runs behind one."""
    found = _person()
    return found[0][1] if found else None


def _params(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Hashable, order-independent parameters without the empty ones."""
    return tuple(sorted((k, str(v).lower() if isinstance(v, bool) else str(v))
                        for k, v in params.items() if v is not None and v != ""))


# The API URL, token and person are arguments so that a change of any is a different cache
# entry: one person's answer is never served to another, whose read must be logged as theirs.
@st.cache_data(ttl=10, show_spinner=False, max_entries=500)
def _query(url: str, token: str | None, person: tuple[tuple[str, str], ...], name: str,
           params: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return api_client.query(url, name, dict(params), token=token, timeout=TIMEOUT, headers=dict(person))


@st.cache_data(ttl=60, show_spinner=False, max_entries=50)
def _query_slow(url: str, token: str | None, person: tuple[tuple[str, str], ...], name: str,
                params: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return api_client.query(url, name, dict(params), token=token, timeout=TIMEOUT, headers=dict(person))


def query(name: str, **params: Any) -> dict[str, Any]:
    """One named query (cached for 10 s)."""
    return _query(api_url(), _token(), _person(), name, _params(params))


def clear() -> None:
    """Forget every cached answer (the pages' Refresh button)."""
    _query.clear()
    _query_slow.clear()


# -- trace back -------------------------------------------------------------------------

def actions(**filters: Any) -> dict[str, Any]:
    """Tool actions with caller, deployment and findings (`order=risk`: riskiest first)."""
    return query("actions", **filters)


def trace_back(**one_id: str) -> dict[str, Any]:
    """The chain of one action_id, tool_call_id or call_id."""
    return query("trace-back", **one_id)


def trace(identifier: str) -> tuple[str | None, dict[str, Any] | None]:
    """Trace back an id of any kind: tried as an action id, a tool call id, then a model call
    id. Returns (the kind that matched, the chain) or (None, None)."""
    identifier = identifier.strip()
    for kind in ("action_id", "tool_call_id", "call_id"):
        found = trace_back(**{kind: identifier})
        if found.get("found"):
            return kind, found
    return None, None


def trace_waterfall(trace_id: str) -> dict[str, Any]:
    """Every audited span of one trace, depth first, with its call or action."""
    return query("trace", trace_id=trace_id)


def session(session_id: str) -> dict[str, Any]:
    """A conversation's, MCP session's or agent run's calls and actions in order."""
    return query("session", session_id=session_id)


def facets(since: str | None = None) -> dict[str, Any]:
    """The values to offer in filters (callers, services, models, deployments, tools, ...)."""
    return _query_slow(api_url(), _token(), _person(), "facets", _params({"since": since}))


# -- who called what ----------------------------------------------------------------------

def calls(**filters: Any) -> dict[str, Any]:
    return query("calls", **filters)


# -- latency, deployments, findings -------------------------------------------------------

def latency(**params: Any) -> dict[str, Any]:
    return query("latency", **params)


def latency_changes(**params: Any) -> dict[str, Any]:
    """Each deployment change with its calls' percentiles before and after."""
    return query("latency-changes", **params)


def gpu_metrics(**params: Any) -> dict[str, Any]:
    """GPU utilisation, GPU memory and KV-cache usage over time, grouped like latency."""
    return query("gpu-metrics", **params)


def usage(**params: Any) -> dict[str, Any]:
    """Calls, tokens and GPU-seconds per caller, deployment or model, with shares."""
    return query("usage", **params)


def deployments(**params: Any) -> dict[str, Any]:
    return query("deployments", **params)


def findings(**params: Any) -> dict[str, Any]:
    return query("findings", **params)


# -- compliance ---------------------------------------------------------------------------

def holds(state: str = "all") -> dict[str, Any]:
    return query("holds", state=state)


def retention_report(start: str, end: str) -> dict[str, Any]:
    return query("retention-report", **{"from": start, "to": end})


def verify() -> dict[str, Any]:
    """Recompute the ledger now (not cached: a reviewer asks for the current answer)."""
    return api_client.query(api_url(), "verify", token=_token(), timeout=600.0, headers=dict(_person()))


def access_log(**filters: Any) -> dict[str, Any]:
    return query("access-log", **filters)


def export(name: str, **params: Any) -> tuple[bytes, dict[str, str]]:
    """An export's bytes and what the warehouse recorded about it (sha256, export_id, rows).
    Never cached: each export is recorded in the ledger with who asked for it."""
    return api_client.export(api_url(), name, dict(_params(params)), token=_token(), timeout=300.0,
                             headers=dict(_person()))


def export_lookup(identifier: str) -> dict[str, Any]:
    """Whether this nimtrail produced an export: by its id or the file's SHA-256 (not
    cached: the answer names who asked, in the access log)."""
    return api_client.query(api_url(), "export-lookup", {"id": identifier.strip()}, token=_token(),
                            timeout=TIMEOUT, headers=dict(_person()))
