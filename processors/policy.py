"""Policy: what the governance record of a deployment says a call or an action may not do.

Findings are judged on a record once it has settled (its join window has passed), and
judged again whenever the record changes after that. A finding whose condition no longer
holds is re-emitted with `detail.status = "resolved"` (an auditor wants to see that it was
raised). The findings are made by the one recipe of nimtrail/deployments/findings.py
(`finding_id` a hash of the kind and the subject), and a finding's version is its
subject's version, so replays and late joins converge like every other record.

Governance lists follow one rule: absent (null) means "not governed"; a list, even empty,
is enforced.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from nimtrail.deployments.findings import new_finding, unknown_deployment_finding

_DENIED = {"denied", "rejected", "blocked", "deny", "reject"}


def _server_names(servers: list[str]) -> set[str]:
    """Every name a listed tool server may appear under in telemetry. Governance files
    write servers as names (`orders-mcp`), `host:port`, or URLs (`mcp://host:port/path`);
    spans carry a service name, `host:port` or a host."""
    names: set[str] = set()
    for server in servers:
        address = server.split("://", 1)[-1].split("/", 1)[0]
        names.update({server, address, address.rsplit(":", 1)[0]})
    return names


def _deployment_ref(deployment: dict[str, Any]) -> dict[str, Any]:
    return {"deployment_id": deployment["deployment_id"], "deployment_version": deployment["version"],
            "purpose": deployment.get("purpose")}


@functools.lru_cache(maxsize=4096)
def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An allowed-clients entry as a network, or None when it is a name. Parsed once:
    every settled call with a client address is checked against the same few entries."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _matches_client(entries: list[Any], call: dict[str, Any]) -> bool | None:
    """Whether any identity of the caller is allowed; None when the call names none."""
    names = {v for v in (call.get("caller"), call.get("client_service")) if v}
    address = call.get("client_address")
    if not names and not address:
        return None
    ip = None
    if address:
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            names.add(address)
    for entry in entries:
        if entry in names:
            return True
        if ip is not None and (network := _network(str(entry))) is not None and ip in network:
            return True
    return False


def call_findings(call: dict[str, Any], deployment: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Findings on one settled model call."""
    out = []
    call_id = call["call_id"]
    when = call.get("started_at") or call.get("ended_at")
    if call.get("deployment_id") is None:
        out.append(unknown_deployment_finding(call_id, [call_id], when, {
            "reason": "the telemetry of this call matches no registered deployment",
            "model": call.get("model"), "signals": call.get("signals")}))
        return out
    if deployment is None:
        return out  # registered, but the call precedes the first version
    requested = call.get("tool_names") or call.get("tool_call_ids")
    if requested and deployment.get("tool_calling_allowed") is False:
        out.append(new_finding("purpose_violation", call_id, [call_id], when, {
            "reason": "the response requested tool calls through a deployment that does not "
                      "allow tool calling",
            "what": "requested", "tool_names": call.get("tool_names"), **_deployment_ref(deployment)}))
    allowed = deployment.get("allowed_clients")
    if allowed is not None and _matches_client(list(allowed), call) is False:
        out.append(new_finding("unauthorized_client", call_id, [call_id], when, {
            "reason": "the caller is not among the deployment's allowed clients",
            "caller": call.get("caller"), "client_service": call.get("client_service"),
            "client_address": call.get("client_address"), "allowed_clients": list(allowed),
            **_deployment_ref(deployment)}))
    return out


def action_findings(action: dict[str, Any], call: dict[str, Any] | None,
                    deployment: dict[str, Any] | None, mcp_aliases: list[str]) -> list[dict[str, Any]]:
    """Findings on one settled tool action, given the call it followed and that call's
    deployment version."""
    action_id = action["action_id"]
    when = action.get("started_at")
    if call is None:
        return [new_finding("unattributed_action", action_id, [action_id], when, {
            "reason": "no model call was found that asked for this action within the join window",
            "tool_name": action.get("tool_name"), "tool_call_id": action.get("tool_call_id"),
            "trace_id": action.get("trace_id")})]
    if deployment is None:
        return []
    subjects = [action_id, call["call_id"]]
    ref = {**_deployment_ref(deployment), "call_id": call["call_id"], "tool_name": action.get("tool_name")}
    out = []
    if deployment.get("tool_calling_allowed") is False:
        out.append(new_finding("purpose_violation", action_id, subjects, when, {
            "reason": "a tool ran on the request of a deployment that does not allow tool calling",
            "what": "executed", **ref}))
    gate = (action.get("gate") or "none").lower()
    decision = (action.get("gate_decision") or "").lower()
    destructive = deployment.get("destructive_tools") or ()
    if action.get("tool_name") in destructive and gate != "human" and decision not in _DENIED:
        out.append(new_finding("ungated_action", action_id, subjects, when, {
            "reason": "a destructive tool ran without a human approval"
                      + (" (approved automatically by policy)" if gate == "policy" else ""),
            "gate": gate, "gate_decision": action.get("gate_decision"),
            "policy_id": action.get("policy_id"), "approver": action.get("approver"),
            "target": action.get("target"), **ref}))
    servers = deployment.get("tool_servers")
    if mcp_aliases and servers is not None and not set(mcp_aliases) & _server_names(servers):
        out.append(new_finding("unlisted_tool_server", action_id, subjects, when, {
            "reason": "the tool ran on an MCP server the deployment's callers may not reach",
            "mcp_server": action.get("mcp_server"), "tool_servers": list(servers), **ref}))
    return out
