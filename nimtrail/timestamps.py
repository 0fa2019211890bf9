"""The one text form of a time in nimtrail, and the only place that formats it.

ISO-8601 in UTC with microseconds and `Z`: `2026-03-01T12:00:00.000000Z`. Records, queries,
findings and the ledger all carry times in this form; being fixed-width, its text order is
time order, so stages compare times as strings without parsing them.

Formatting is memoised per second: a batch of spans or log lines shares a few seconds, and
`strftime` was a measurable share of normalising one.
"""

from __future__ import annotations

import datetime as _dt
import functools

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
POLARS_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"  # the same text, written by polars' `dt.strftime`

_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_SECOND = _dt.timedelta(seconds=1)
_SECONDS: dict[int, str] = {}


def _second(secs: int) -> str:
    base = _SECONDS.get(secs)
    if base is None:
        if len(_SECONDS) > 65536:
            _SECONDS.clear()
        base = _SECONDS[secs] = (_EPOCH + _dt.timedelta(seconds=secs)).strftime("%Y-%m-%dT%H:%M:%S")
    return base


def iso(value: _dt.datetime) -> str:
    """A datetime as nimtrail's text; a naive one is taken as UTC (DuckDB's TIMESTAMP)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return "%s.%06dZ" % (_second((value - _EPOCH) // _ONE_SECOND), value.microsecond)


def iso_from_ns(ns: int | None) -> str | None:
    """Unix nanoseconds (OTLP's times) as nimtrail's text; None for 0 or None (unset)."""
    if not ns:
        return None
    secs, rem = divmod(int(ns), 1_000_000_000)
    return "%s.%06dZ" % (_second(secs), rem // 1000)


def iso_from_seconds(seconds: float) -> str:
    """Unix seconds (time.time()) as nimtrail's text."""
    return iso(_dt.datetime.fromtimestamp(seconds, _UTC))


def now_iso() -> str:
    return iso(_dt.datetime.now(_UTC))


def seconds(text: object) -> float | None:
    """nimtrail's time text as Unix seconds; None for anything else. Cheap on the hot
    path: the minute is parsed once per distinct minute, the seconds as a float."""
    if not isinstance(text, str) or len(text) < 20:
        return None
    minute = _minute(text[:16])
    try:
        return None if minute is None else minute + float(text[17:].rstrip("Z"))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _minute(text: str) -> float | None:
    """`YYYY-MM-DDTHH:MM` as Unix seconds (cached: evidence arriving together shares it)."""
    try:
        return _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=_UTC).timestamp()
    except ValueError:
        return None
