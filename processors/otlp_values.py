"""Plain Python values from OTLP protobuf attributes, without MessageToDict (which is ~100x
slower and would dominate the hot path)."""

from __future__ import annotations

from typing import Any, Iterable


def any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None


def attributes(pairs: Iterable[Any]) -> dict[str, Any]:
    out = {}
    for kv in pairs:
        value = kv.value
        # Strings are most attributes: read them without a call per value. An unset oneof
        # member reads as "", so only an empty string needs the full look.
        text = value.string_value
        out[kv.key] = text if text else any_value(value)
    return out


# The resource attribute a sender may set (OTEL_RESOURCE_ATTRIBUTES) to name its deployment
# outright, as a log source's configured deployment does.
DEPLOYMENT_ATTRIBUTE = "nimtrail.deployment"


def resource_identities(resource: dict[str, Any]) -> list[str]:
    """The deployment identities an OTLP resource carries, strongest first (see
    nimtrail/deployments/registry.py): `dep:`, `k8s:<ns>/<deployment|statefulset>`, `pod:<ns>/<pod>`,
    `svc:<service.name>`."""
    identities = []
    if resource.get(DEPLOYMENT_ATTRIBUTE):
        identities.append(f"dep:{resource[DEPLOYMENT_ATTRIBUTE]}")
    namespace = resource.get("k8s.namespace.name")
    if namespace:
        for name in (resource.get("k8s.deployment.name"), resource.get("k8s.statefulset.name")):
            if name:
                identities.append(f"k8s:{namespace}/{name}")
        if resource.get("k8s.pod.name"):
            identities.append(f"pod:{namespace}/{resource['k8s.pod.name']}")
    if resource.get("service.name"):
        identities.append(f"svc:{resource['service.name']}")
    return identities


def resource_source(resource: dict[str, Any]) -> str:
    """A stable name for what sent an OTLP resource, in the place a log source's path goes:
    `otlp:<ns>/<pod>[/<container>]`, else `otlp:<service.name>[@<instance or host>]`,
    else `otlp:<host>`, else `otlp`."""
    namespace, pod = resource.get("k8s.namespace.name"), resource.get("k8s.pod.name")
    if pod:
        container = resource.get("k8s.container.name")
        return f"otlp:{namespace or ''}/{pod}" + (f"/{container}" if container else "")
    where = resource.get("service.instance.id") or resource.get("host.name")
    service = resource.get("service.name")
    if service:
        return f"otlp:{service}" + (f"@{where}" if where else "")
    return f"otlp:{where}" if where else "otlp"
