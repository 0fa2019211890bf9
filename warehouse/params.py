"""Query parameters from the network: parsed and checked, errors naming the parameter."""

from __future__ import annotations

import datetime as dt
from typing import Mapping

from nimtrail.errors import PermanentError


class BadParameter(PermanentError):
    """A query parameter is missing, unknown or malformed: HTTP 400."""

    def __init__(self, name: str, problem: str):
        super().__init__("bad_parameter", f"parameter '{name}': {problem}")
        self.name = name


class Params:
    def __init__(self, raw: Mapping[str, list[str]], allowed: set[str]):
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise BadParameter(unknown[0], f"unknown (accepted: {', '.join(sorted(allowed))})")
        self._raw = raw

    @property
    def raw(self) -> Mapping[str, list[str]]:
        """The parameters as given (what a sharded warehouse's front forwards to shards)."""
        return self._raw

    def text(self, name: str) -> str | None:
        values = self._raw.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadParameter(name, "given more than once")
        value = values[0].strip()
        if len(value) > 512:
            raise BadParameter(name, "longer than 512 characters")
        return value or None

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError as e:
            raise BadParameter(name, f"expected an integer, got {value!r}") from e
        if not lo <= number <= hi:
            raise BadParameter(name, f"must be between {lo} and {hi}")
        return number

    def time(self, name: str) -> dt.datetime | None:
        """ISO-8601 (a trailing Z or offset is converted to UTC) → naive UTC datetime."""
        value = self.text(name)
        if value is None:
            return None
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise BadParameter(name, f"expected an ISO-8601 time, got {value!r}") from e
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return parsed

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.text(name)
        if value is None:
            return default
        if value not in options:
            raise BadParameter(name, f"expected one of {', '.join(options)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise BadParameter(name, f"expected true or false, got {value!r}")
