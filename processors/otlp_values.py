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
