"""Content policy: prompts, responses and tool arguments are always hashed; their text is
kept only where configured, and redacted before it is kept.

The hash is SHA-256 of a canonical form, so that the same content hashes the same however
it was serialised: a JSON string is parsed and re-encoded with sorted keys and no spaces;
any other string is hashed as its UTF-8 bytes.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from nimtrail.config import ContentConfig
from nimtrail.records import canonical_bytes, sha256_hex

# Each pattern's match is replaced by [REDACTED:<name>]. Order matters: specific
# credential shapes first, then the generic "key: value" form, then personal data.
_BUILTIN = (
    ("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    ("api_key", r"\b(?:nvapi-[A-Za-z0-9_-]{16,}|sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}"
                r"|gh[pousr]_[A-Za-z0-9]{30,}|xox[baprs]-[A-Za-z0-9-]{10,})"),
    ("secret", r"(?i)\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password"
               r"|passwd|authorization)[\"']?\s*[:=]\s*[\"']?(?!\[REDACTED)[^\s\"',;}]{4,}"),
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SECRET_LABEL = re.compile(r"(?i)^(.*?[:=]\s*[\"']?)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


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


class ContentPolicy:
    """Built once from `processor.content`; `keep_*` return redacted text or None."""

    def __init__(self, config: ContentConfig = ContentConfig()):
        self.config = config
        self._patterns = [(name, re.compile(p)) for name, p in _BUILTIN]
        self._patterns += [("custom", re.compile(p)) for p in config.redact_patterns]

    def redact(self, text: str) -> str:
        for name, pattern in self._patterns:
            if name == "secret":
                text = pattern.sub(lambda m: _SECRET_LABEL.match(m.group(0)).group(1)
                                   + "[REDACTED:secret]", text)
            else:
                text = pattern.sub(f"[REDACTED:{name}]", text)

        def card(match: re.Match) -> str:
            digits = re.sub(r"[ -]", "", match.group(0))
            return "[REDACTED:card]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)

        return _CARD.sub(card, text)

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
