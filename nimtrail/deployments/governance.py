"""The governance file the platform team writes for a deployment: what it was approved for.

    deployment: prod/llama-3-1-8b          # optional: the id it governs
    purpose: Summarise support tickets for the helpdesk
    tool_calling_allowed: false
    allowed_clients: [helpdesk-summariser]  # service.name / caller ids that may call it
    tool_servers: []                        # MCP servers its callers may reach
    destructive_tools: []                   # tools whose effects cannot be undone
    reviewed_by: platform-governance@example.com
    update_channel: pinned                  # how the image may change: pinned, patch, latest...
    identities:                             # optional: extra ways telemetry names it
      service_names: [llama-3-1-8b]
      host_ports: ["llama.prod.svc:8000"]

Unknown keys are rejected (a misspelt `alowed_clients` must not silently allow nobody).
Lists are stored sorted and without duplicates: their order carries no meaning, and a
reordering must not make a new version.
"""

from __future__ import annotations

from typing import Any

from nimtrail.deployments.documents import Document
from nimtrail.deployments.fragment import IDENTITY_KINDS, Fragment, identities

FIELDS = ("purpose", "tool_calling_allowed", "allowed_clients", "tool_servers",
          "destructive_tools", "reviewed_by", "update_channel")
KEYS = ("deployment", *FIELDS, "identities")
# Keys that only a governance file has: how it is told from other files.
MARKERS = {"purpose", "tool_calling_allowed", "allowed_clients", "tool_servers",
           "destructive_tools", "reviewed_by", "update_channel"}


def looks_like_governance(value: Any) -> bool:
    return isinstance(value, dict) and bool(MARKERS & set(value))


def read_governance(doc: Document) -> Fragment:
    value = doc.mapping((), required=True)
    for key in value:
        if key not in KEYS:
            raise doc.fail((key,), "unknown key", "one of " + ", ".join(KEYS))
    fields: dict[str, Any] = {
        "purpose": doc.text(("purpose",), expected="a sentence saying what it may be used for"),
        "tool_calling_allowed": doc.flag(("tool_calling_allowed",)),
        "reviewed_by": doc.text(("reviewed_by",), expected="who reviewed it"),
        "update_channel": doc.text(("update_channel",), expected="a channel name such as pinned"),
    }
    for key in ("allowed_clients", "tool_servers", "destructive_tools"):
        if doc.get((key,)) is not None:
            fields[key] = sorted(set(doc.strings((key,))))
    extra = doc.mapping(("identities",))
    for kind in extra:
        if kind not in IDENTITY_KINDS:
            raise doc.fail(("identities", kind), "unknown identity kind",
                           "one of " + ", ".join(IDENTITY_KINDS))
    declared = {kind: doc.strings(("identities", kind)) for kind in extra}
    deployment = doc.text(("deployment",), expected="the deployment id, e.g. prod/llama-3-1-8b")
    return Fragment(source="manual", origin=doc.origin, deployment_id=deployment,
                    fields={k: v for k, v in fields.items() if v is not None},
                    identities=identities(**declared), describes="governance file")
