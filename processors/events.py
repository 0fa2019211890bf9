"""The processor's internal events."""

import logging

from nimtrail.ops import Event


class MessagesConsumed(Event):
    level = logging.DEBUG
    message = "Consumed %(count)s messages from %(topic)s"
    thing, unit, doc = "consumed", "messages", "Input messages processed"
    labels = ("topic",)


class RecordsEmitted(Event):
    level = logging.DEBUG
    message = "Emitted %(count)s %(kind)s records"
    thing, unit, doc = "emitted", "records", "Canonical records produced to the audit topics"
    labels = ("kind",)


class InputRejected(Event):
    level = logging.WARNING
    message = "Sent a message from %(topic)s to the dead-letter topic because of %(reason)s: %(detail)s"
    thing, unit, doc = "rejected", "messages", "Input messages sent to the dead-letter topic"
    labels = ("topic", "reason")
