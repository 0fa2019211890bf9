"""The warehouse's internal events."""

import logging

from nimtrail.ops import Event


class RowsWritten(Event):
    level = logging.DEBUG
    message = "Wrote %(count)s %(kind)s records"
    thing, unit, doc = "written", "records", "Records upserted into the audit store"
    labels = ("kind",)


class MessageRejected(Event):
    level = logging.WARNING
    message = "Sent a message from %(topic)s to the dead-letter topic because of %(reason)s: %(detail)s"
    thing, unit, doc = "rejected", "messages", "Audit messages sent to the dead-letter topic"
    labels = ("topic", "reason")


class QueryServed(Event):
    level = logging.DEBUG
    message = "Served query %(query)s with %(rows)s rows"
    thing, unit, doc = "queries", "requests", "Query API requests answered"
    labels = ("query", "status")
