"""Secrets never enter a deployment record.

Three nets, from the most to the least certain:
1. by name: an environment variable, key or flag named like a key, token, password or
   secret (NGC_API_KEY, HF_TOKEN, DB_PASSWORD, ngcAPIKey, --api-key) has its value replaced;
2. by shape: values that look like credentials wherever they appear (nvapi-…, JWTs,
   sk-…, hf_…, ghp_…, AWS access key ids, private key blocks, user:password@ in URLs,
   Bearer tokens): the shapes audit records are redacted of too (nimtrail.redaction);
3. by entropy: long tokens that mix upper case, lower case and digits with high Shannon
   entropy, in environment values and container arguments.

A replaced value becomes `[redacted sha256:<8 hex>]`: the fingerprint lets a reviewer see
that a key was rotated (the record's version changes) without keeping the key. Hex ids
(profile ids, image digests, UUIDs) are single-case and are never taken for secrets.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from typing import Any

from nimtrail.redaction import Redactor, credential_shapes, pattern_finder

MARKER_PREFIX = "[redacted sha256:"

_SECRET_WORDS = {"key", "apikey", "token", "password", "passwd", "pwd", "secret", "secrets",
                 "credential", "credentials", "authorization", "privatekey", "passphrase",
                 "accesskey", "secretkey"}

# Candidate tokens for the entropy net stop at ".", ":", "-", "_" so that paths, URLs,
# versions and model names (mistralai/Mixtral-8x7B-Instruct-v0.1) are judged word by word.
_TOKEN = r"[A-Za-z0-9+/=]{20,}+"


def fingerprint(value: Any) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:8]


def marker(value: Any) -> str:
    """What replaces a secret: a marker with a short fingerprint of the value."""
    return f"{MARKER_PREFIX}{fingerprint(value)}]"


def is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(MARKER_PREFIX) and value.endswith("]")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """True for names like NGC_API_KEY, HF_TOKEN, DB_PASSWORD, ngcAPIKey, --api-key."""
    words = _words(name)
    if any(w in _SECRET_WORDS for w in words):
        return True
    joined = "".join(words)
    return any(joined.endswith(s) for s in ("apikey", "accesskey", "secretkey", "password", "token"))


def entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


# Each token character as its class: upper, lower, digit, or none ("+", "/", "=").
_CLASSES = str.maketrans({**{chr(c): "u" for c in range(65, 91)}, **{chr(c): "l" for c in range(97, 123)},
                          **{chr(c): "d" for c in range(48, 58)}, "+": "x", "/": "x", "=": "x"})
_SWITCHES = ("ul", "ud", "lu", "ld", "du", "dl")


def _high_entropy(token: str) -> bool:
    """Random-looking: all three character classes, switching often, with high entropy.

    Words in identifiers (LlamaNemotronInstruct) switch class rarely; random tokens switch
    on about half of their adjacent characters. Counted with string operations, not a
    loop per character: a token may be long.
    """
    if len(token) < 20:
        return False
    classes = token.translate(_CLASSES)
    if not ("u" in classes and "l" in classes and "d" in classes):
        return False
    pairs = sum(len(part) - 1 for part in classes.split("x") if part)  # adjacent classed pairs
    switches = sum(classes.count(pair) for pair in _SWITCHES)
    return switches / max(1, pairs) >= 0.3 and entropy(token) >= 3.9


# Credential shapes anywhere, and, for environment values and arguments, the entropy net.
_WITH_ENTROPY = Redactor([*credential_shapes(), ("entropy", pattern_finder(_TOKEN, _high_entropy))],
                         lambda _kind, found: marker(found))
_SHAPES_ONLY = Redactor(credential_shapes(), lambda _kind, found: marker(found))


def looks_like_credential(value: Any, *, entropy_check: bool = True) -> bool:
    """True if the value is, or contains, something shaped like a credential."""
    if not isinstance(value, str) or is_marker(value):
        return False
    return (_WITH_ENTROPY if entropy_check else _SHAPES_ONLY).finds_any(value)


def redact_text(value: str, *, entropy_check: bool = True) -> str:
    """`value` with every credential-shaped part replaced by a marker (see
    nimtrail.redaction: linear time, at most its scan limit kept)."""
    if not value or is_marker(value):
        return value
    return (_WITH_ENTROPY if entropy_check else _SHAPES_ONLY).redact(value)


def redact_value(name: str, value: Any) -> Any:
    """An environment or config value as it may be stored, given the name it is set under."""
    if value is None or is_marker(value):
        return value
    if is_secret_name(name):
        return marker(value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_args(args: list[str]) -> list[str]:
    """Command-line arguments with the values of secret-named flags replaced.

    Handles `--api-key VALUE`, `--api-key=VALUE` and credential-shaped values anywhere.
    """
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(marker(arg))
            hide_next = False
            continue
        flag, eq, rest = arg.partition("=")
        if flag.startswith("-") and is_secret_name(flag):
            if eq:
                out.append(f"{flag}={marker(rest)}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_text(arg))
    return out


def scrub(value: Any) -> Any:
    """A deep copy with credential-shaped strings replaced (the last net over a record)."""
    if isinstance(value, str):
        return redact_text(value, entropy_check=False)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def preview(value: Any, limit: int = 40) -> str:
    """A value as it may appear in an error message: credentials masked, long text cut."""
    text = redact_text(str(value))
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
