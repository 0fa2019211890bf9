"""How long the raw topics that carry content keep it.

Prompts, responses and tool arguments reach Kafka inside OTLP spans and logs and NIM log
lines (otlp_spans, otlp_logs, nimtrail.raw.nimlogs) exactly as they were sent: the
collector forwards untouched, and the topics are a replay source. The content policy
(`processor.content.keep_*`) decides what the audit records keep; this decides how long
the raw copies sit in Kafka. With the broker's default (7 days) a prompt the policy never
keeps would still be readable there for a week.

`processor.content.raw_retention`:
- `auto` (default): 24h while every keep_* is false; with any keep_* on, nimtrail leaves
  the topics' retention as it finds it;
- a duration (`6h`, `3d`): set on the topics whatever keep_* says;
- `broker`: nimtrail never sets it (topics managed elsewhere).

The trade-off: the retention is also how long a stopped processor can stay stopped
without losing input, and how far back the raw topics can be replayed. Kafka deletes
whole segments only, so the segment roll (`segment.ms`) is capped at an hour: content
leaves the broker within the retention plus an hour plus the broker's retention check
interval (`log.retention.check.interval.ms`, 5 minutes by default).
"""

from __future__ import annotations

from nimtrail.config import Config, Duration

AUTO_RETENTION_S = 24 * 3600
MAX_SEGMENT_MS = 3600 * 1000


def retention_seconds(config: Config) -> float | None:
    """The retention the raw content topics should have; None: leave it to the broker."""
    content = config.processor.content
    if content.raw_retention == "broker":
        return None
    if content.raw_retention == "auto":
        if content.keep_prompts or content.keep_responses or content.keep_arguments:
            return None
        return AUTO_RETENTION_S
    return float(Duration.parse(content.raw_retention))


def topic_settings(config: Config) -> dict[str, dict[str, str]]:
    """Topic name -> the configs to give it, for the raw topics that carry content."""
    seconds = retention_seconds(config)
    if seconds is None:
        return {}
    ms = int(seconds * 1000)
    settings = {"retention.ms": str(ms), "segment.ms": str(min(ms, MAX_SEGMENT_MS))}
    t = config.topics
    return {name: settings for name in (t.otlp_spans, t.otlp_logs, t.nimlogs)}
