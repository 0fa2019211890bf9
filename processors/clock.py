"""Times taken from input, held to what the pipeline can believe.

Every time a sender states (span start and end, a log line's time, a scrape sample's
timestamp, an OTLP log or metric point's time) comes from a clock nimtrail does not own. A
time outside [received - max_age, received + max_ahead] is replaced by the receive time,
and a `clock_skew` finding names the record, the field and the value as it was sent. What
must stay true downstream: no stored time is far in the future (the warehouse's queries
and a reader's eye both assume "now-ish"), and no record arrives already older than the
longest retention class (retention would purge it on arrival).

The receive time is the Kafka timestamp of the input message (the collector's clock when
it forwarded the message, or the broker's): it is stored with the message, so a replay
after a crash clamps to the same time and produces the same records and findings.

Comparisons are on ISO-8601 text (nimtrail.timestamps, what every normaliser
produces): text of that one shape orders as the times do, and the hot path pays a string
comparison per time, not a datetime per time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from nimtrail import records
from nimtrail.config import ClockConfig, RetentionConfig
from nimtrail.timestamps import iso_from_seconds
from processors import policy

# The window back when no retention class limits it (every class kept forever).
DEFAULT_MAX_AGE = 400 * 86400.0
KIND = "clock_skew"
# How a sent value is to be read, for the finding's detail.
UNIX_NANO, UNIX_SECONDS, TEXT = "unix_nano", "unix_seconds", "text"


@dataclasses.dataclass(frozen=True)
class ClockLimits:
    max_age: float  # seconds before the receive time
    max_ahead: float  # seconds after it

    @classmethod
    def of(cls, clock: ClockConfig, retention: RetentionConfig | None = None) -> "ClockLimits":
        """`clock.max_age`, or (0) the longest retention class, or DEFAULT_MAX_AGE."""
        max_age = float(clock.max_age)
        if max_age <= 0:
            retention = retention or RetentionConfig()
            longest = max(float(getattr(retention, f.name)) for f in dataclasses.fields(retention)
                          if f.name != "interval")
            max_age = longest if longest > 0 else DEFAULT_MAX_AGE
        return cls(max_age=max_age, max_ahead=float(clock.max_ahead))


class Clock:
    """The bounds for the times of one input message, and the findings they raised."""

    __slots__ = ("received", "low", "high", "findings")

    def __init__(self, limits: ClockLimits, received: float | None = None):
        now = time.time()
        # A message without a usable timestamp (none, or one that is itself out of range)
        # is judged against the processor's own clock.
        if received is None or not (now - limits.max_age <= received <= now + limits.max_ahead):
            received = now
        self.received = iso_from_seconds(received)
        self.low = iso_from_seconds(max(received - limits.max_age, 0.0))
        self.high = iso_from_seconds(received + limits.max_ahead)
        self.findings: list[dict[str, Any]] = []

    def clamp(self, when: str | None, sent: Any, sent_as: str, record: str, subject: str,
              field: str, where: str = "") -> str | None:
        """`when` (ISO text, or None when the sent value could not be read as a time) if it
        lies within the bounds, else the receive time, with a finding on `subject` (the id
        of the `record` kind) naming `field` and `sent`. Nothing sent (None, 0, ""): None.
        `where` tells two observations of one record apart (a span id, a log line)."""
        if when is not None and self.low <= when <= self.high:
            return when
        if when is None and sent in (None, 0, ""):
            return None
        detail = {"reason": "the time sent lies outside what the pipeline accepts around the receive "
                            "time; the receive time was stored instead",
                  "record": record, "field": field, "sent": str(sent), "sent_as": sent_as,
                  "stored": self.received, "accepted_from": self.low, "accepted_to": self.high}
        if where:
            detail["observation"] = where
        finding = policy.new_finding(KIND, f"{record}|{subject}|{field}|{where}", [subject],
                                     self.received, detail)
        finding["version"] = 1  # a finding on what one input said: it never changes
        self.findings.append(finding)
        return self.received

    def name_subject(self, since: int, subject: str) -> None:
        """Add `subject` to the findings raised since `since` (len(findings) then): a log
        line's time is judged before the line is known to name a model call."""
        for finding in self.findings[since:]:
            if subject not in finding["subject_ids"]:
                finding["subject_ids"] = [*finding["subject_ids"], subject]


def default_clock() -> Clock:
    """A clock for callers that judge no times (DEFAULT limits, the processor's clock)."""
    return Clock(ClockLimits.of(ClockConfig()))


def stamp(items: list[dict[str, Any]]) -> None:
    """observed_at for records made straight from input (samples, clock findings): the
    time the pipeline saw them, which retention weighs against the time they claim."""
    observed = records.now_iso()
    for item in items:
        if item.get("observed_at") is None:
            item["observed_at"] = observed
