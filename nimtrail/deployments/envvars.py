"""A NIM container's environment: reading it from a pod spec or Helm values, storing it
without secrets, and the record fields the NIM variables determine."""

from __future__ import annotations

import shlex
from typing import Any

from nimtrail.deployments.documents import Document, Path_, truthy
from nimtrail.deployments.fragment import clean
from nimtrail.deployments.profiles import profile_fields
from nimtrail.deployments.redact import redact_args, redact_value

_REF_KINDS = ("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef")

OTEL_VARIABLES = ("NIM_ENABLE_OTEL", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                  "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER",
                  "OTEL_RESOURCE_ATTRIBUTES", "NIM_OTEL_SERVICE_NAME",
                  "NIM_OTEL_TRACES_EXPORTER", "NIM_OTEL_EXPORTER_OTLP_ENDPOINT")


def container_env(doc: Document, path: Path_) -> dict[str, str]:
    """`env:` as a Kubernetes container (and the nim-llm chart) writes it: a list of
    {name, value} or {name, valueFrom}. A valueFrom is kept as a description of the
    reference (`secretKeyRef ngc-api/NGC_API_KEY`), never resolved."""
    out: dict[str, str] = {}
    for i, item in enumerate(doc.sequence(path)):
        where = (*path, i)
        if not isinstance(item, dict):
            raise doc.fail(where, "an env entry is not a mapping",
                           "{name: VARIABLE, value: \"...\"} or {name: ..., valueFrom: {...}}")
        name = doc.text((*where, "name"), required=True, expected="the variable's name")
        if "valueFrom" in item:
            source = doc.mapping((*where, "valueFrom"), required=True)
            kind = next((k for k in _REF_KINDS if k in source), None)
            if kind is None:
                raise doc.fail((*where, "valueFrom"), "unknown reference",
                               "one of " + ", ".join(_REF_KINDS))
            ref = doc.mapping((*where, "valueFrom", kind), required=True)
            target = "/".join(str(ref[k]) for k in ("name", "key", "fieldPath", "resource")
                              if ref.get(k) is not None)
            out[name] = f"valueFrom {kind} {target}".strip()
        else:
            value = item.get("value")
            if isinstance(value, (dict, list)):
                raise doc.fail((*where, "value"), "got a structure", "a string value")
            if isinstance(value, float):
                raise doc.fail((*where, "value"), "got a number",
                               "a quoted string (Kubernetes env values are strings)")
            if isinstance(value, bool):
                value = "true" if value else "false"
            out[name] = "" if value is None else str(value)
    return out


def stored_env(env: dict[str, str]) -> dict[str, str]:
    """The environment as the record keeps it: secret-named or credential-looking values
    replaced by a fingerprinted marker; references (valueFrom) kept as they are."""
    out = {}
    for name, value in env.items():
        if value.startswith("valueFrom "):
            out[name] = value
        elif name == "NIM_PASSTHROUGH_ARGS":
            out[name] = " ".join(redact_args(_split(value)))
        else:
            out[name] = redact_value(name, value)
    return out


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def env_fields(env: dict[str, str]) -> dict[str, Any]:
    """Record fields that NIM's own variables determine (None-free).

    NIM_MODEL_PROFILE (id or name), NIM_SERVED_MODEL_NAME, NIM_MODEL_NAME (model source),
    NIM_ENABLE_AUTO_TOOL_CHOICE / NIM_TOOL_CALL_PARSER (or the vLLM flags in
    NIM_PASSTHROUGH_ARGS), NIM_JSONL_LOGGING / NIM_LOG_LEVEL, NIM_PEFT_SOURCE,
    NIM_TENSOR_PARALLEL_SIZE / NIM_PIPELINE_PARALLEL_SIZE and the OpenTelemetry variables.
    """
    fields: dict[str, Any] = {}
    profile = env.get("NIM_MODEL_PROFILE", "").strip()
    if profile:
        fields.update(profile_fields(profile))
    served = env.get("NIM_SERVED_MODEL_NAME", "").strip()
    if served:
        fields["model_id"] = served.split(",")[0].strip()
    model_name = env.get("NIM_MODEL_NAME", "").strip()
    if model_name:
        fields["model_source"] = redact_value("NIM_MODEL_NAME", model_name)

    args = _split(env.get("NIM_PASSTHROUGH_ARGS", ""))
    auto = truthy(env["NIM_ENABLE_AUTO_TOOL_CHOICE"]) if "NIM_ENABLE_AUTO_TOOL_CHOICE" in env else None
    if auto is None and "--enable-auto-tool-choice" in args:
        auto = True
    parser = env.get("NIM_TOOL_CALL_PARSER", "").strip() or _arg_value(args, "--tool-call-parser")
    fields["tool_calling"] = clean({"enabled": bool(auto), "parser": parser or None,
                                    "parser_plugin": env.get("NIM_TOOL_PARSER_PLUGIN") or None})

    logging_mode = {}
    if "NIM_JSONL_LOGGING" in env:
        logging_mode["jsonl"] = bool(truthy(env["NIM_JSONL_LOGGING"]))
    if env.get("NIM_LOG_LEVEL"):
        logging_mode["level"] = env["NIM_LOG_LEVEL"].strip().upper()
    if logging_mode:
        fields["logging_mode"] = logging_mode

    tracing = {name: redact_value(name, env[name]) for name in OTEL_VARIABLES if env.get(name)}
    if tracing:
        tracing["enabled"] = bool(truthy(env.get("NIM_ENABLE_OTEL", "")) or
                                  env.get("OTEL_TRACES_EXPORTER", "").lower() not in ("", "none"))
        fields["tracing_config"] = tracing

    lora = {}
    if env.get("NIM_PEFT_SOURCE"):
        lora = {"enabled": True, "source": redact_value("NIM_PEFT_SOURCE", env["NIM_PEFT_SOURCE"])}
        if env.get("NIM_MAX_LORAS", "").isdigit():
            lora["max_loras"] = int(env["NIM_MAX_LORAS"])
    if lora:
        fields["lora"] = {**fields.get("lora", {}), **lora}

    for variable, field in (("NIM_TENSOR_PARALLEL_SIZE", "tensor_parallel"),
                            ("NIM_PIPELINE_PARALLEL_SIZE", "pipeline_parallel")):
        if env.get(variable, "").strip().isdigit():
            fields[field] = int(env[variable])
    return fields


def service_names(env: dict[str, str]) -> list[str]:
    """The OpenTelemetry `service.name` the container reports, if it sets one."""
    names = [env.get("OTEL_SERVICE_NAME", ""), env.get("NIM_OTEL_SERVICE_NAME", "")]
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name":
            names.append(value)
    return [n.strip() for n in names if n and n.strip()]
