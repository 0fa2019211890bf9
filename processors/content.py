"""Content policy: prompts, responses and tool arguments are always hashed; their text is
kept only where configured, and redacted before it is kept.

The hash is SHA-256 of a canonical form, so that the same content hashes the same however
it was serialised: a JSON string is parsed and re-encoded with sorted keys and no spaces;
any other string is hashed as its UTF-8 bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from nimtrail.config import ContentConfig
from nimtrail.records import canonical_bytes, sha256_hex
from nimtrail.redaction import (SECRET_VALUE, Redactor, credential_shapes, pattern_finder,
                                personal_data, whole_matches)


def canonical(value: Any) -> Any:
    """The value a hash is taken of: JSON text parsed, anything else as it is."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "[", '"'):
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                return value
    return value


_DIGESTS: dict[str, str] = {}


def digest(value: Any) -> str | None:
    """SHA-256 hex of the canonical form; None for no content.

    Short text is memoised (a bounded cache): one trace carries the same tool arguments on its
    execute_tool span and on both MCP spans, and parsing plus re-encoding JSON to hash it
    is a measurable share of normalising a span."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 2048:
        found = _DIGESTS.get(value)
        if found is None:
            if len(_DIGESTS) >= 4096:
                _DIGESTS.clear()
            found = _DIGESTS[value] = sha256_hex(canonical(value))
        return found
    return sha256_hex(canonical(value))


def as_text(value: Any) -> str:
    """Content as one string: canonical JSON for structured content."""
    value = canonical(value)
    if isinstance(value, str):
        return value
    return canonical_bytes(value).decode()


def _label(kind: str, _found: str) -> str:
    return f"[REDACTED:{kind}]"


class ContentPolicy:
    """Built once from `processor.content`; `keep_*` return redacted text or None.

    Redaction (nimtrail.redaction) runs in time linear in the text and scans at most
    `max_text_bytes` of it: what lies beyond is dropped, and a marker gives its size and
    hash. Credential shapes first, then a labelled secret (`password: x` keeps its label),
    then personal data, then the configured patterns."""

    def __init__(self, config: ContentConfig = ContentConfig()):
        self.config = config
        detectors = [*credential_shapes(), ("secret", pattern_finder(SECRET_VALUE)), *personal_data(),
                     *(("custom", whole_matches(p)) for p in config.redact_patterns)]
        self.redactor = Redactor(detectors, _label, config.max_text_bytes)

    def redact(self, text: str) -> str:
        return self.redactor.redact(text)

    def redact_field(self, value: Any) -> Any:
        """A free-text field kept whatever `keep_*` says (a tool's error, its target),
        redacted like content; values that are not text pass unchanged."""
        return self.redactor.redact(value) if isinstance(value, str) else value

    def _keep(self, enabled: bool, value: Any) -> str | None:
        if not enabled or value is None or value == "":
            return None
        return self.redact(as_text(value))

    def keep_prompt(self, value: Any) -> str | None:
        return self._keep(self.config.keep_prompts, value)

    def keep_response(self, value: Any) -> str | None:
        return self._keep(self.config.keep_responses, value)

    def keep_arguments(self, value: Any) -> str | None:
        return self._keep(self.config.keep_arguments, value)
