"""The shapes a NIM container's log line comes in, reduced to (level, time, message).

- NIM 2.x JSONL: `{"level","time":"2026-03-03 12:00:10","file_name","line_number":42,"message"}`
- NIM 1.x JSONL: `{"level","time":"07-23 22:27:24.929","file_path","line_number":"141",
  "message","exc_info","stack_info"}` — no year, line number as a string
- the NIM / vLLM text logger: `INFO 02-20 21:47:24 model_runner.py:173] message` (year in
  later 1.x; newer vLLM writes `[file.py:173]` and may prefix `(APIServer pid=1) `)
- TensorRT-LLM: `2026-02-20 21:46:26,645 [WARNING] [TRT-LLM] [W] message`
- uvicorn's own text form: `INFO:     10.0.0.1:5000 - "GET /v1/models HTTP/1.1" 200 OK`
- other JSON objects (a gateway's access log, for instance) come back as `fields`.
Runtime framing (CRI `<time> stderr F <line>`, docker json-file `{"log": ...}`) is normally
removed by the collector; it is removed here too if it is still there.

None of these carries a timezone (NIM containers log UTC); the runtime's timestamp, when
the collector has one, wins.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from nimtrail.timestamps import iso

import orjson

_UTC = dt.timezone.utc
_TEXT = re.compile(
    r"^(?:\(\w+ pid=\d+\)\s+)?(?P<level>TRACE|DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+"
    r"(?:(?P<year>\d{4})-)?(?P<md>\d\d-\d\d) (?P<hms>\d\d:\d\d:\d\d)(?:[.,](?P<frac>\d+))?\s+"
    r"\[?(?P<file>[\w./-]+\.py):(?P<line>\d+)\]\s?(?P<message>.*)$", re.S)
_TRT = re.compile(r"^(?P<date>\d{4}-\d\d-\d\d) (?P<hms>\d\d:\d\d:\d\d)[,.](?P<frac>\d+) "
                  r"\[(?P<level>[A-Z]+)\]\s?(?P<message>.*)$", re.S)
_UVICORN = re.compile(r"^(?P<level>INFO|WARNING|ERROR|DEBUG|CRITICAL):\s+(?P<message>.*)$", re.S)
_CRI = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT\S+) (?:stdout|stderr) [FP] (?P<line>.*)$", re.S)
_JSON_TIME = re.compile(r"^(?:(?P<year>\d{4})-)?(?P<md>\d\d-\d\d)[ T](?P<hms>\d\d:\d\d:\d\d)"
                        r"(?:[.,](?P<frac>\d+))?$")


@dataclasses.dataclass(slots=True)
class Line:
    shape: str  # json2 | json1 | text | trtllm | uvicorn | json | plain (| message: see nimlogs)
    level: str | None
    time: str | None  # ISO-8601 UTC (nimtrail.timestamps)
    message: str
    fields: dict[str, Any] | None = None  # for `json`: the object


def parse_iso(text: Any) -> dt.datetime | None:
    """A timestamp from ISO-8601 text (any fraction length, `Z` or offset); None if not one."""
    if not isinstance(text, str) or len(text) < 10:
        return None
    value = text.strip().replace(" ", "T", 1)
    match = re.match(r"^(.*?T\d\d:\d\d:\d\d)(?:[.,](\d+))?(.*)$", value)
    if match:
        frac = (match.group(2) or "")[:6].ljust(6, "0")
        tz = match.group(3) or ""
        value = f"{match.group(1)}.{frac}{'+00:00' if tz in ('Z', 'z', '') else tz}"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_UTC)


def _clock(year: str | None, md: str, hms: str, frac: str | None,
           reference: dt.datetime) -> dt.datetime | None:
    """A wall-clock time without timezone (read as UTC); without a year, the one that puts
    it nearest before `reference` (lines are printed before they are received)."""
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        month, day = int(md[:2]), int(md[3:])
        hour, minute, second = int(hms[:2]), int(hms[3:5]), int(hms[6:8])
        if year:
            return dt.datetime(int(year), month, day, hour, minute, second, micro, _UTC)
        for y in (reference.year, reference.year - 1):
            candidate = dt.datetime(y, month, day, hour, minute, second, micro, _UTC)
            if candidate <= reference + dt.timedelta(days=2):
                return candidate
    except ValueError:
        return None
    return None


_CLOCKS: dict[tuple, str | None] = {}


def _clock_iso(year: str | None, md: str, hms: str, frac: str | None, reference: dt.datetime) -> str | None:
    """iso(_clock(...)), memoised: a batch's lines share a handful of timestamps (the
    reference matters only without a year)."""
    key = (year, md, hms, frac, None if year else reference)
    found = _CLOCKS.get(key, False)
    if found is False:
        if len(_CLOCKS) > 65536:
            _CLOCKS.clear()
        when = _clock(year, md, hms, frac, reference)
        found = _CLOCKS[key] = iso(when) if when else None
    return found


def parse(text: str, reference: dt.datetime) -> Line:
    """Reduce one line to its level, time and message; `plain` when no shape fits."""
    text = text.rstrip("\r\n")
    if text.startswith("{"):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            return _json(doc, reference)
    elif text[:4].isdigit() and (cri := _CRI.match(text)):
        stamp = parse_iso(cri.group("time"))
        inner = parse(cri.group("line"), stamp or reference)
        if stamp is not None:
            inner.time = iso(stamp)
        return inner
    if match := _TEXT.match(text):
        when = _clock_iso(match.group("year"), match.group("md"), match.group("hms"), match.group("frac"),
                          reference)
        return Line("text", match.group("level"), when, match.group("message"))
    if match := _TRT.match(text):
        when = parse_iso(f"{match.group('date')}T{match.group('hms')}.{match.group('frac')}")
        return Line("trtllm", match.group("level"), iso(when) if when else None, match.group("message"))
    if match := _UVICORN.match(text):
        return Line("uvicorn", match.group("level"), None, match.group("message"))
    return Line("plain", None, None, text)


def _json(doc: dict[str, Any], reference: dt.datetime) -> Line:
    if "log" in doc and isinstance(doc["log"], str) and "message" not in doc:  # docker json-file
        stamp = parse_iso(doc.get("time"))
        inner = parse(doc["log"], stamp or reference)
        if stamp is not None:
            inner.time = iso(stamp)
        return inner
    message = doc.get("message")
    if not isinstance(message, str):
        return Line("json", None, None, "", doc)
    shape = "json1" if "file_path" in doc or isinstance(doc.get("line_number"), str) else "json2"
    when = None
    raw_time = doc.get("time")
    if isinstance(raw_time, str) and (match := _JSON_TIME.match(raw_time.strip())):
        when = _clock_iso(match.group("year"), match.group("md"), match.group("hms"), match.group("frac"),
                          reference)
    elif isinstance(raw_time, str):
        stamp = parse_iso(raw_time)
        when = iso(stamp) if stamp else None
    level = doc.get("level")
    return Line(shape, str(level) if level else None, when, message)
