"""The lines a NIM 1.x container logs at start that say which profile it runs.

    Selected profile: <64 hex> (<profile name>)
    Profile metadata: <key>: <value>          (one line per tag: llm_engine, precision,
                                               tp, pp, feat_lora, gpu, gpu_device, profile)

They arrive in any of the forms a NIM log line takes: the 1.x JSON object (the text is its
`message`), the text form `INFO 2024-07-23 22:27:24.929 ngc_injector.py:141] ...`, or
wrapped by the container runtime (CRI `<time> stderr F <line>`, Docker's json-file
`{"log": ...}`). Line numbers differ between releases, so nothing here keys on them.

Pure functions: `parse_line` for one line (for a stream processor that sees lines one
batch at a time), `parse_startup_lines` for a sequence (a file, or a batch).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import orjson

_SELECTED = re.compile(r"Selected profile:\s*([0-9a-fA-F]{64})\s*(?:\(([^()\s]+)\))?")
_METADATA = re.compile(r"Profile metadata:\s*([A-Za-z0-9_.\-]+)\s*:\s*(.*?)\s*$")
_API_VERSION = re.compile(r"NIM LLM API version\s+(\d+(?:\.\d+)+)")
_CRI = re.compile(r"^\d{4}-\d\d-\d\dT\S+\s+(?:stdout|stderr)\s+[FP]\s?")


def message_of(text: str) -> str:
    """The log message inside a line, with runtime and JSONL framing removed."""
    text = _CRI.sub("", text.rstrip("\r\n"), count=1)
    stripped = text.lstrip()
    for _ in range(2):  # docker json-file around a NIM JSONL line
        if not stripped.startswith("{"):
            break
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            break
        if not isinstance(doc, dict):
            break
        inner = doc.get("message", doc.get("log", doc.get("msg")))
        if not isinstance(inner, str):
            break
        stripped = inner.strip()
    return stripped


def parse_line(text: str) -> tuple[str, Any] | None:
    """Classify one line: ("selected_profile", {"profile_id", "profile_name"}),
    ("profile_metadata", (key, value)), ("api_version", "1.0.0"), or None."""
    message = message_of(text)
    if "Selected profile" in message:
        match = _SELECTED.search(message)
        if match:
            return "selected_profile", {"profile_id": match.group(1).lower(),
                                        "profile_name": match.group(2)}
    if "Profile metadata" in message:
        match = _METADATA.search(message)
        if match:
            return "profile_metadata", (match.group(1), match.group(2))
    if "API version" in message:
        match = _API_VERSION.search(message)
        if match:
            return "api_version", match.group(1)
    return None


def parse_startup_lines(lines: Iterable[str]) -> dict[str, Any] | None:
    """The profile the container selected, as the `nim-log` observation's facts:
    {"profile_id", "profile_name", "profile_tags": {...}} (plus "api_version" when logged).

    When the log holds several starts (a restarted container), the last one wins.
    None when no `Selected profile` line is present.
    """
    facts: dict[str, Any] | None = None
    api_version = None
    for line in lines:
        parsed = parse_line(line)
        if parsed is None:
            continue
        kind, value = parsed
        if kind == "selected_profile":
            facts = {**value, "profile_tags": {}}
        elif kind == "profile_metadata" and facts is not None:
            key, tag_value = value
            facts["profile_tags"][key] = tag_value
        elif kind == "api_version":
            api_version = value
    if facts is not None and api_version:
        facts["api_version"] = api_version
    return facts
