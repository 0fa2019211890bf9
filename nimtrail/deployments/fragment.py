"""What one source says about one deployment, before sources are merged into a record."""

from __future__ import annotations

import dataclasses
from typing import Any

# The sources a deployment record's fields come from (the record's `source` names the main
# one). "manual" is the governance file the platform team writes.
SOURCES = ("helm", "k8s", "nim-metadata", "nim-log", "manual")

# Sources of one class describe the same thing and replace each other on re-registration:
# a new values file or manifest replaces what the previous declaration said, a new
# governance file replaces the previous review, a new observation the previous one.
SOURCE_CLASS = {"helm": "declared", "k8s": "declared", "manual": "governance",
                "nim-metadata": "nim-metadata", "nim-log": "nim-log"}

IDENTITY_KINDS = ("k8s", "pod_prefixes", "service_names", "host_ports", "model_names")


def empty_identities() -> dict[str, list[str]]:
    return {kind: [] for kind in IDENTITY_KINDS}


@dataclasses.dataclass(frozen=True)
class Fragment:
    """Fields one source states about one deployment.

    `origin` names where it was read (the file's name, `#N` for the Nth document of a
    multi-document file); `deployment_id` is set when the source names its deployment.
    `fields` holds deployment record fields (never None values); `identities` the
    telemetry identities it contributes, by kind.
    """

    source: str
    origin: str
    deployment_id: str | None
    fields: dict[str, Any]
    identities: dict[str, list[str]] = dataclasses.field(default_factory=empty_identities)
    describes: str = ""  # e.g. "StatefulSet prod/llama", for messages

    @property
    def label(self) -> str:
        """How `field_sources` names this source: "helm:values.yaml"."""
        return f"{self.source}:{self.origin}"

    @property
    def source_class(self) -> str:
        return SOURCE_CLASS[self.source]


def clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields without None values (and without empty mappings)."""
    return {k: v for k, v in fields.items() if v is not None and v != {}}


def identities(**kinds: list[str] | None) -> dict[str, list[str]]:
    out = empty_identities()
    for kind, values in kinds.items():
        out[kind] = sorted({v for v in values or [] if v})
    return out


def host_ports(service: str, namespace: str | None, port: int | None) -> list[str]:
    """The addresses a client inside the cluster may use for a Service."""
    if not service or not port:
        return []
    names = [service]
    if namespace:
        names += [f"{service}.{namespace}", f"{service}.{namespace}.svc",
                  f"{service}.{namespace}.svc.cluster.local"]
    return [f"{n}:{port}" for n in names]
