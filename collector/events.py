"""The collector's internal events: each logs a sentence and counts under the same labels.

Counters (on the collector's /metrics, names nimtrail_collector_<thing>_<unit>_total):
received, forwarded (durable in Kafka), buffered (durable on disk, Kafka pending),
rejected (sent to the dead-letter topic, by reason), retry_later (client told to retry,
by reason), drained (buffered messages that reached Kafka), scrapes and files events,
unauthenticated requests (by reason), token file and Kubernetes discovery updates.
"""

import logging

from nimtrail.ops import Event


class ItemsReceived(Event):
    level = logging.DEBUG
    message = "Received %(items)s items on %(receiver)s"
    thing, unit, doc = "received", "items", "Items (spans, log records, metrics, lines, samples) accepted"
    labels = ("receiver",)


class ItemsForwarded(Event):
    level = logging.DEBUG
    message = "Forwarded %(items)s items from %(receiver)s to %(topic)s"
    thing, unit, doc = "forwarded", "items", "Items made durable in Kafka"
    labels = ("receiver", "topic")


class ItemsBuffered(Event):
    level = logging.DEBUG
    message = "Buffered %(items)s items from %(receiver)s for %(topic)s on disk while Kafka is unavailable"
    thing, unit, doc = "buffered", "items", "Items made durable in the on-disk buffer, waiting for Kafka"
    labels = ("receiver", "topic")


class RequestRejected(Event):
    level = logging.WARNING
    message = "Rejected input on %(receiver)s because of %(reason)s: %(detail)s"
    thing, unit, doc = "rejected", "inputs", "Inputs refused and sent to the dead-letter topic"
    labels = ("receiver", "reason")


class ForwardFailed(Event):
    level = logging.WARNING
    message = "Could not make input from %(receiver)s durable (%(reason)s), the client will retry: %(detail)s"
    thing, unit = "retry_later", "requests"
    doc = "Inputs refused with a retry hint (Kafka unavailable, buffer full)"
    labels = ("receiver", "reason")


class DeadLetterFailed(Event):
    level = logging.ERROR
    message = "Could not write rejected input from %(receiver)s to the dead-letter topic: %(detail)s"
    thing, unit = "dead_letter_failures", "inputs"
    doc = "Rejected inputs that could not reach the dead-letter topic"
    labels = ("receiver",)


class BufferDrained(Event):
    level = logging.INFO
    message = "Sent %(messages)s buffered messages to %(topic)s"
    thing, unit, doc = "drained", "messages", "Buffered messages that reached Kafka"
    labels = ("topic",)


class ScrapeFailed(Event):
    level = logging.WARNING
    message = "Scrape of %(target)s failed (%(reason)s): %(detail)s"
    thing, unit, doc = "scrape_failures", "scrapes", "Scrapes that left a target marked down (up 0)"
    labels = ("target", "reason")


class PollFailed(Event):
    level = logging.WARNING
    message = "Polling %(endpoint)s failed (%(reason)s): %(detail)s"
    thing, unit, doc = "metadata_poll_failures", "polls", "NIM management endpoint polls that failed"
    labels = ("endpoint", "reason")


class FileEvent(Event):
    level = logging.INFO
    message = "Log file %(path)s: %(event)s"
    thing, unit, doc = "file_events", "total", "Tailed files opened, rotated, truncated, closed"
    labels = ("event",)


class TargetsReloaded(Event):
    level = logging.INFO
    message = "Scrape targets file %(path)s: %(outcome)s %(detail)s"
    thing, unit, doc = "target_reloads", "total", "Re-reads of the scrape targets file"
    labels = ("outcome",)


class RequestUnauthenticated(Event):
    level = logging.WARNING
    message = "Refused a request on %(receiver)s from %(peer)s (%(reason)s)%(detail)s; nothing of it was kept"
    thing, unit = "unauthenticated", "requests"
    doc = "Requests refused for a missing or unknown token, or a failed TLS handshake (never stored)"
    labels = ("receiver", "reason")


class TokensReloaded(Event):
    level = logging.INFO
    message = "Ingestion tokens file %(path)s: %(outcome)s %(detail)s"
    thing, unit, doc = "token_reloads", "total", "Re-reads of the ingestion tokens file"
    labels = ("outcome",)


class DiscoveryChanged(Event):
    level = logging.INFO
    message = "Kubernetes discovery: %(scrape)s scrape and %(metadata)s metadata targets from annotated Services"
    thing, unit, doc = "discovery_updates", "total", "Changes of the targets found on annotated Services"
    labels = ()


class DiscoveryFailed(Event):
    level = logging.WARNING
    message = "Kubernetes discovery could not list Services (%(reason)s), keeping the previous targets: %(detail)s"
    thing, unit, doc = "discovery_failures", "total", "Failed lists of Services; the previous targets stay"
    labels = ("reason",)
