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


class CheckpointWritten(Event):
    level = logging.INFO
    message = "Signed ledger digest %(digest_seq)s at chain entry %(seq)s (%(file)s)"
    thing, unit, doc = "checkpoints", "digests", "Signed ledger digests written"


class DigestPublishFailed(Event):
    level = logging.WARNING
    message = "Could not publish ledger digest %(digest_seq)s to Kafka, will retry: %(error)s"
    thing, unit, doc = "digest_publish_failures", "digests", "Digest publications that failed"


class RetentionApplied(Event):
    level = logging.INFO
    message = "Retention %(policy)s on %(table)s: %(action)s %(rows)s rows, %(held)s kept by legal holds"
    thing, unit, doc = "retention", "rows", "Rows purged, nulled or rolled up by retention"
    labels = ("policy", "table", "action")


class AccessRefused(Event):
    level = logging.WARNING
    message = "Refused %(operation)s to %(principal)s from %(client)s: %(status)s %(why)s"
    thing, unit, doc = "access_refused", "requests", "Query API requests refused (401/403)"
    labels = ("status",)


class TaskFailed(Event):
    level = logging.ERROR
    message = "The warehouse's %(task)s failed and will be retried at its next turn: %(error)s"
    thing, unit, doc = "task_failures", "total", "Checkpoint or retention runs that failed"
    labels = ("task",)
