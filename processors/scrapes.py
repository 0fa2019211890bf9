"""Normalise one Prometheus scrape (nimtrail.raw.scrapes) into metric_sample records.

Counters and gauges become one sample each. A histogram's `_bucket`, `_sum` and `_count`
series become ONE sample per series per scrape: `buckets` = [[le, cumulative_count], ...]
in ascending `le` (the last is `"+Inf"`, whose count is the histogram's count), `value` =
the `_sum`, `labels` without `le`. Percentiles by GPU profile can then be computed from the
buckets as well as from the calls. The scrape's health becomes an `up` sample.

sample_id is a hash of (target, metric, labels, time as sent), so re-delivery changes
nothing. A time out of bounds becomes the receive time (processors/clock.py).
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from nimtrail import records
from nimtrail.records import sha256_hex
from processors.clock import TEXT, UNIX_SECONDS, Clock, default_clock
from processors.nimlog_lines import iso, parse_iso


def _ts(sample: dict[str, Any], scraped_at: tuple[str | None, Any, str]) -> tuple[str | None, Any, str]:
    """(ISO time or None when it cannot be one, the value as sent, how to read it)."""
    stamp = sample.get("timestamp")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp > 0:
        # Exposition timestamps are seconds (prometheus-client's parser) or milliseconds.
        seconds = stamp / 1000.0 if stamp > 1e11 else float(stamp)
        try:
            return iso(_dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)), stamp, UNIX_SECONDS
        except (OverflowError, OSError, ValueError):  # beyond year 9999, or inf / NaN
            return None, stamp, UNIX_SECONDS
    return scraped_at


def _le(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.inf


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def normalise(doc: dict[str, Any], clock: Clock | None = None) -> tuple[list[dict[str, Any]], int]:
    """(samples, malformed sample count) of one decoded scrapes message; `clock` bounds
    the samples' times."""
    clock = clock or default_clock()
    target = str(doc.get("target") or "")
    deployment = doc.get("deployment") or None
    stamp = parse_iso(doc.get("scraped_at"))
    scraped_at = (iso(stamp) if stamp else None, doc.get("scraped_at"), TEXT)
    out: list[dict[str, Any]] = []
    malformed = 0

    # Like Prometheus, every series gets its target as `instance` (and the job), unless the
    # exposition names them itself: two pods of one deployment export the same series, and
    # their cumulative counters must not be read as one.
    target_labels = {"job": doc["job"]} if doc.get("job") else {}
    if target:
        target_labels["instance"] = target

    def emit(metric: str, labels: dict[str, Any], sent: tuple[str | None, Any, str], value: float | None,
             buckets: list | None = None) -> None:
        labels = {**target_labels, **labels}
        ts = sent[0]
        sample_id = sha256_hex([target, metric, labels, ts if ts is not None else sent[1]])[:32]
        ts = clock.clamp(ts, sent[1], sent[2], "metric_sample", sample_id, "ts")
        out.append(records.new("metric_sample", sample_id=sample_id, ts=ts, deployment_id=deployment,
                               metric=metric, labels=labels, value=value, buckets=buckets, version=1))

    emit("up", {"target": target}, scraped_at, 1.0 if doc.get("up") else 0.0)
    histograms: dict[tuple[str, bytes], dict[str, Any]] = {}
    for sample in doc.get("samples") or ():
        if not isinstance(sample, dict) or not isinstance(sample.get("name"), str):
            malformed += 1
            continue
        name = sample["name"]
        labels = sample.get("labels") if isinstance(sample.get("labels"), dict) else {}
        value = sample.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            malformed += 1
            continue
        ts = _ts(sample, scraped_at)
        base, part = name, None
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                base, part = name[: -len(suffix)], suffix
                break
        if part == "_bucket" and "le" in labels:
            series = {k: v for k, v in labels.items() if k != "le"}
        elif part in ("_sum", "_count"):
            series = labels
        else:
            emit(name, labels, ts, _finite(value))
            continue
        key = (base, records.canonical_bytes(series))
        h = histograms.setdefault(key, {"labels": series, "ts": ts, "buckets": [], "sum": None,
                                        "count": None, "parts": set()})
        h["parts"].add(part)
        if part == "_bucket":
            h["buckets"].append((_le(labels["le"]), value))
        elif part == "_sum":
            h["sum"] = _finite(value)
        else:
            h["count"] = value
    for (base, _), h in histograms.items():
        if "_bucket" not in h["parts"]:
            # A summary or a plain counter that happens to end in _sum/_count.
            if h["sum"] is not None:
                emit(base + "_sum", h["labels"], h["ts"], h["sum"])
            if h["count"] is not None:
                emit(base + "_count", h["labels"], h["ts"], float(h["count"]))
            continue
        buckets = sorted(h["buckets"])
        if h["count"] is not None and (not buckets or buckets[-1][0] != math.inf):
            buckets.append((math.inf, h["count"]))
        encoded = [["+Inf" if le == math.inf else le, count] for le, count in buckets]
        emit(base, h["labels"], h["ts"], h["sum"], encoded)
    return out, malformed
