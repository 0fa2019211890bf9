"""The collector's internal events: each logs a sentence and counts under the same labels."""

import logging

from nimtrail.ops import Event


class ItemsReceived(Event):
    level = logging.DEBUG
    message = "Received %(items)s items on %(receiver)s"
    thing, unit, doc = "received", "items", "Items (spans, log records, metrics, lines) accepted"
    labels = ("receiver",)


class ItemsForwarded(Event):
    level = logging.DEBUG
    message = "Forwarded %(items)s items from %(receiver)s to %(topic)s"
    thing, unit, doc = "forwarded", "items", "Items made durable in Kafka"
    labels = ("receiver", "topic")


class RequestRejected(Event):
    level = logging.WARNING
    message = "Rejected input on %(receiver)s because of %(reason)s: %(detail)s"
    thing, unit, doc = "rejected", "requests", "Inputs refused and sent to the dead-letter topic"
    labels = ("receiver", "reason")


class ForwardFailed(Event):
    level = logging.WARNING
    message = "Could not make input from %(receiver)s durable, the client will retry: %(detail)s"
    thing, unit, doc = "retry_later", "requests", "Inputs refused with a retry hint because Kafka was unavailable"
    labels = ("receiver",)
