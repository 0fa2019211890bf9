"""The lines a NIM 1.x container logs at start that say what it runs: the one parser of
NIM startup facts, for registration (a saved log) and the processor (a log stream) alike.

    Valid profile: <64 hex> (<profile name>) on GPUs [0, 1]
    Selected profile: <64 hex> (<profile name>)
    Profile metadata: <key>: <value>          (one line per tag: llm_engine, precision,
                                               tp, pp, feat_lora, gpu, gpu_device, profile)
    NIM LLM API version 1.0.0
    Initializing an LLM engine (v0.4.1) with config: model=..., tensor_parallel_size=1, ...

They arrive in any of the forms a NIM log line takes: the 1.x JSON object (the text is its
`message`), the text form `INFO 2024-07-23 22:27:24.929 ngc_injector.py:141] ...`, or
wrapped by the container runtime (CRI `<time> stderr F <line>`, Docker's json-file
`{"log": ...}`). Line numbers differ between releases, so nothing here keys on them.

Pure: `parse_line` classifies one line, `StartupFacts` folds lines as they come (a stream
processor sees them a batch at a time), `parse_startup_lines` reads a sequence (a file).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import orjson

_SELECTED = re.compile(r"Selected profile:\s*([0-9a-fA-F]{64})\s*(?:\(([^()\s]+)\))?")
_VALID = re.compile(r"Valid profile:\s*([0-9a-fA-F]{64})\s*(?:\(([^()\s]+)\))?\s*on GPUs\s*\[([\d,\s]*)\]")
_METADATA = re.compile(r"Profile metadata:\s*([A-Za-z0-9_.\-]+)\s*:\s*(.*?)\s*$")
_API_VERSION = re.compile(r"NIM LLM API version\s+(\d+(?:\.\d+)+)")
_ENGINE = re.compile(r"Initializing an LLM engine \(([^)]+)\) with config: (.*)$")
_ENGINE_SETTING = re.compile(r"(\w+)=([^,]*)")
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
    """Classify one line (or a message already taken out of its line):
    ("selected_profile", {"profile_id", "profile_name"}), ("profile_metadata", (key, value)),
    ("valid_profile", (profile_id, {"name", "gpus": [0, 1]})), ("api_version", "1.0.0"),
    ("engine", {"engine_version", "engine_config"}), or None."""
    message = message_of(text)
    if "Selected profile" in message:
        match = _SELECTED.search(message)
        if match:
            return "selected_profile", {"profile_id": match.group(1).lower(),
                                        "profile_name": match.group(2)}
    if "Valid profile" in message:
        match = _VALID.search(message)
        if match:
            gpus = [int(g) for g in re.findall(r"\d+", match.group(3))]
            return "valid_profile", (match.group(1).lower(), {"name": match.group(2), "gpus": gpus})
    if "Profile metadata" in message:
        match = _METADATA.search(message)
        if match:
            return "profile_metadata", (match.group(1), match.group(2))
    if "API version" in message:
        match = _API_VERSION.search(message)
        if match:
            return "api_version", match.group(1)
    if "LLM engine" in message:
        match = _ENGINE.search(message)
        if match:
            return "engine", {"engine_version": match.group(1),
                              "engine_config": dict(_ENGINE_SETTING.findall(match.group(2)))}
    return None


class StartupFacts:
    """Startup facts folded line by line, as a file is read or a stream arrives in
    batches: a `Selected profile` line starts a new set of profile tags (a restarted
    container logs its start again), the rest accumulate. `lines` keeps, per fact, the
    message that stated it: what a drift finding quotes as its source."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self.lines: dict[str, str] = {}

    def add(self, text: str) -> bool:
        """Fold one line in; False when it states no startup fact."""
        parsed = parse_line(text)
        if parsed is None:
            return False
        kind, value = parsed
        message = message_of(text)
        if kind == "selected_profile":
            self.facts.update(value, profile_tags={})
            self.lines["profile_id"] = self.lines["profile_name"] = message
        elif kind == "profile_metadata":
            self.facts.setdefault("profile_tags", {})[value[0]] = value[1]
            self.lines[f"profile_tags.{value[0]}"] = message
        elif kind == "valid_profile":
            self.facts.setdefault("valid_profiles", {})[value[0]] = value[1]
            self.lines[f"valid_profiles.{value[0]}"] = message
        elif kind == "api_version":
            self.facts["api_version"] = value
            self.lines["api_version"] = message
        else:
            self.facts.update(value)
            self.lines["engine_version"] = message
        return True


def parse_startup_lines(lines: Iterable[str]) -> dict[str, Any] | None:
    """The profile the container selected, as the `nim-log` observation's facts:
    {"profile_id", "profile_name", "profile_tags": {...}} (plus "api_version",
    "valid_profiles" and the engine's version and config when logged).

    When the log holds several starts (a restarted container), the last one wins.
    None when no `Selected profile` line is present.
    """
    startup = StartupFacts()
    for line in lines:
        startup.add(line)
    return startup.facts if "profile_id" in startup.facts else None
