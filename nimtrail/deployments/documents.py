"""Loading deployment description files as documents that remember where each key sits.

Every error a reader raises names the file, the line (where the file has lines) and the
key, and says what was expected — a reviewer fixing a values file at 2am should not need
to guess. Error messages never quote a value verbatim: a value may be a credential.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from nimtrail.deployments.redact import preview
from nimtrail.errors import NimtrailError

Path_ = tuple[Any, ...]  # a key path inside one document: ("spec", "template", 0, "image")


class DeploymentFileError(NimtrailError):
    """A file given for registration is malformed or of no known kind.

    `file` is the name as given, `where` the line and/or key (may be empty), `expected`
    what would have been accepted.
    """

    def __init__(self, file: str, where: str, problem: str, expected: str = ""):
        self.file, self.where, self.problem, self.expected = file, where, problem, expected
        text = f"{file}: {where}: {problem}" if where else f"{file}: {problem}"
        super().__init__(f"{text}; expected {expected}" if expected else text)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = str(part)
            needs_quotes = "." in part or "/" in part
            text = f'["{part}"]' if needs_quotes else part
            out += text if (needs_quotes or not out) else f".{text}"
    return out


@dataclasses.dataclass
class Document:
    """One document of a file: its value and the line of every key path in it."""

    file: str
    value: Any
    index: int = 1  # 1-based position in a multi-document file
    count: int = 1  # documents in the file
    lines: dict[Path_, int] = dataclasses.field(default_factory=dict)

    @property
    def origin(self) -> str:
        """How records name this document: the file's base name, `#N` in a multi-document file."""
        base = Path(self.file).name
        return f"{base}#{self.index}" if self.count > 1 else base

    def line(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def where(self, path: Path_) -> str:
        parts = []
        line = self.line(path)
        if line is not None:
            parts.append(f"line {line}")
        elif self.count > 1:
            parts.append(f"document {self.index}")
        if path:
            parts.append(f"key {dotted(path)}")
        return ", ".join(parts)

    def fail(self, path: Path_, problem: str, expected: str = "") -> DeploymentFileError:
        return DeploymentFileError(self.file, self.where(path), problem, expected)

    def get(self, path: Path_, default: Any = None) -> Any:
        node = self.value
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    return default
            elif not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return default if node is None else node

    # ---- typed access: each raises naming the key and what was expected ---------------

    def mapping(self, path: Path_, required: bool = False) -> dict[str, Any]:
        value = self.get(path)
        if value is None:
            if required:
                raise self.fail(path, "missing", "a mapping")
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"got {_kind(value)}", "a mapping")
        return value

    def sequence(self, path: Path_, required: bool = False) -> list[Any]:
        value = self.get(path)
        if value is None:
            if required:
                raise self.fail(path, "missing", "a list")
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"got {_kind(value)}", "a list")
        return value

    def text(self, path: Path_, required: bool = False, expected: str = "a string") -> str | None:
        value = self.get(path)
        if value is None or value == "":
            if required:
                raise self.fail(path, "missing", expected)
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            hint = " (quote it, YAML read it as a number)" if isinstance(value, float) else ""
            raise self.fail(path, f"got {_kind(value)}{hint}", expected)
        return str(value)

    def integer(self, path: Path_, expected: str = "a whole number") -> int | None:
        value = self.get(path)
        if value is None or value == "":
            return None
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"got {_kind(value)}", expected)
        return value

    def flag(self, path: Path_) -> bool | None:
        value = self.get(path)
        if value is None or value == "":
            return None
        parsed = truthy(value)
        if parsed is None:
            raise self.fail(path, f"got {_kind(value)}", "true or false")
        return parsed

    def strings(self, path: Path_) -> list[str]:
        items = self.sequence(path)
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise self.fail((*path, i), f"got {_kind(item)}", "a string")
        return [str(i) for i in items]


def truthy(value: Any) -> bool | None:
    """How NIM reads a boolean environment value ("1", "true", "yes", ...); None if neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on", "enabled"}:
        return True
    if text in {"0", "false", "no", "off", "disabled", ""}:
        return False
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({preview(value)})"
    if isinstance(value, str):
        return f"a string ({preview(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# ---- loading ---------------------------------------------------------------------------


def read_text(path: str | Path) -> str:
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DeploymentFileError(name, "", f"cannot read the file ({e.strerror})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DeploymentFileError(name, f"byte {e.start}", "not UTF-8 text",
                                  "a YAML, JSON or log text file") from e


def load_documents(name: str, text: str) -> list[Document]:
    """Parse YAML (JSON is YAML) into documents, remembering the line of every key."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(name, e) from e
    except yaml.YAMLError as e:
        raise DeploymentFileError(name, "", "not valid YAML or JSON",
                                  "a YAML or JSON document") from e
    docs = []
    constructor = yaml.SafeLoader("")
    for index, node in enumerate(nodes, start=1):
        try:
            value = constructor.construct_document(node)
        except yaml.MarkedYAMLError as e:
            raise _syntax_error(name, e) from e
        lines: dict[Path_, int] = {}
        _record_lines(node, (), lines)
        docs.append(Document(name, value, index, len(nodes), lines))
    return docs


def load_json(name: str, text: str) -> list[Document]:
    """JSON that YAML cannot read (rare: e.g. tabs); located by JSON's own line numbers."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DeploymentFileError(name, f"line {e.lineno}, column {e.colno}",
                                  f"not valid JSON ({e.msg})", "a JSON document") from e
    return [Document(name, value)]


def _syntax_error(name: str, e: yaml.MarkedYAMLError) -> DeploymentFileError:
    # The problem text only: PyYAML's own message quotes the offending line, which may
    # hold a credential.
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = " ".join(p for p in (e.context, e.problem) if p) or "syntax error"
    return DeploymentFileError(name, where, f"not valid YAML or JSON ({problem})",
                               "a YAML or JSON document")


def _record_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value
                _record_lines(value_node, (*path, key), lines)
                lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*path, i), lines)

