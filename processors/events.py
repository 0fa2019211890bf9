"""The processor's internal events: each logs a sentence and counts under the same labels."""

import logging

from nimtrail.ops import Event


class MessagesConsumed(Event):
    level = logging.DEBUG
    message = "Consumed %(count)s messages from %(topic)s"
    thing, unit, doc = "consumed", "messages", "Input messages processed"
    labels = ("topic",)


class EvidenceSentAway(Event):
    level = logging.DEBUG
    message = "Sent %(count)s %(source)s evidence items from the %(by)s through the evidence topic"
    thing, unit, doc = "sent_away", "evidence", ("Evidence items for partitions of the join held by another "
                                                 "member, by who placed them (normaliser, joiner) and source")
    labels = ("by", "source")


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


class EvidenceJoined(Event):
    level = logging.DEBUG
    message = "Read %(count)s evidence items from %(kind)s"
    thing, unit, doc = "joined", "evidence", "Evidence items handed to the joiner, by source"
    labels = ("kind",)


class LogLinesRead(Event):
    level = logging.DEBUG
    message = "Read %(count)s NIM log lines of kind %(kind)s"
    thing, unit, doc = "read", "log_lines", "NIM log lines by what they turned out to be"
    labels = ("kind",)


class MetricPointsSkipped(Event):
    level = logging.DEBUG
    message = "Skipped %(count)s OTLP metric points: %(reason)s"
    thing, unit, doc = "skipped", "metric_points", "OTLP metric points that became no sample, by why"
    labels = ("reason",)


class FindingRaised(Event):
    # Each finding is a record of the audit trail and counted here; a line per finding
    # was most of the stage's log (2,200 lines a second at 5,000 spans/s).
    level = logging.DEBUG
    message = "Finding %(kind)s (%(status)s) on %(subject)s"
    thing, unit, doc = "raised", "findings", "Policy findings produced (open or resolved)"
    labels = ("kind", "status")


class RecordsSettled(Event):
    level = logging.DEBUG
    message = "%(count)s records passed their join window"
    thing, unit, doc = "settled", "records", "Records whose join window passed (findings judged)"


class DeploymentRegistered(Event):
    level = logging.INFO
    message = "Registered deployment %(deployment)s version %(version)s"
    thing, unit, doc = "registered", "deployments", "Deployment versions read from the deployments topic"


class ProduceRetried(Event):
    level = logging.WARNING
    message = "Kafka did not acknowledge %(what)s (%(error)s); retrying in %(delay).1fs"
    thing, unit, doc = "retried", "produces", "Output batches produced again after a failure"
    labels = ("what",)


class StateRestored(Event):
    level = logging.INFO
    message = "Restored %(count)s join state entries from %(topic)s in %(seconds).1fs"
    thing, unit, doc = "restored", "entries", "Join state entries read back from the changelog"


class ContentDropped(Event):
    level = logging.WARNING
    message = "A %(kind)s record is too large for one Kafka message; its text was dropped, its hashes kept"
    thing, unit, doc = "dropped", "records", "Records whose kept text exceeded one Kafka message"
    labels = ("kind",)


class ProducerReplaced(Event):
    level = logging.WARNING
    message = "The Kafka producer stopped after %(error)s; a new one replaces it"
    thing, unit, doc = "replaced", "producers", "Producers replaced after a non-retriable error"


class AssignmentIncomplete(Event):
    level = logging.WARNING
    message = ("Assigned %(expected)s input partitions less %(missing)s; rejoining the group "
               "(one processor must read every input partition)")
    thing, unit, doc = "rejoined", "times", "Group rejoins because input partitions were not assigned"


class StateEvicted(Event):
    level = logging.DEBUG
    message = "Evicted %(count)s settled join state entries (%(reason)s)"
    thing, unit, doc = "evicted", "entries", "Settled entries that left the join state, by why (ttl or a cap)"
    labels = ("reason",)


class StateChanged(Event):
    level = logging.DEBUG
    message = "Wrote %(count)s join state changes to the changelog"
    thing, unit, doc = "state_changes", "entries", ("Join state entries written to the changelog (changed, or "
                                                  "deleted); per input event, the cost of keeping the state")


class BatchDelivered(Event):
    level = logging.DEBUG
    message = "Delivered a polled batch of %(count)s messages"
    thing, unit, doc = "delivered", "batches", ("Polled batches taken through to committed offsets; each has a "
                                              "fixed cost (acknowledgements, the state's fence, the commit)")


class StateRewritten(Event):
    level = logging.DEBUG
    message = "Wrote %(count)s unchanged join state entries again, so that the chunks holding them can go"
    thing, unit, doc = "state_rewritten", "entries", ("Unchanged join state entries written again so that the "
                                                     "changelog chunks holding them could be tombstoned")


class StateFull(Event):
    level = logging.WARNING
    message = ("The join state is at its cap with unsettled records: %(count)s settled before their "
               "join window ended since this was last logged (at most once a minute)")
    every = 60.0  # under load this is every batch
    thing, unit, doc = "settled_early", "records", "Records settled before their join window because the state was full"


class LateDuplicatesIgnored(Event):
    level = logging.DEBUG
    message = "Ignored %(count)s evidence items of records that already left the join state"
    thing, unit, doc = "ignored_late", "evidence", "Re-delivered evidence of records no longer in the join state"


class FieldTruncated(Event):
    level = logging.WARNING
    message = "Cut %(count)s %(field)s values to their limit (prefix kept, size and sha256 of the original appended)"
    thing, unit, doc = "truncated", "fields", "Input values cut to processor.limits at ingest, by field"
    labels = ("field",)


class OutputRefused(Event):
    level = logging.ERROR
    message = "Kafka refused a %(size)s-byte message for %(topic)s (%(error)s); it goes to the dead-letter topic"
    thing, unit, doc = "refused", "messages", "Output messages Kafka refused for good, sent to the dead-letter topic"
    labels = ("topic",)


class OutputLost(Event):
    level = logging.ERROR
    message = "The dead-letter topic refused even the headers of a message from %(topic)s (%(reason)s): %(error)s"
    thing, unit, doc = "lost", "messages", "Dead letters Kafka refused even without their value"
    labels = ("topic",)


class BecameActive(Event):
    level = logging.INFO
    message = ("Reading the input (%(partitions)s partitions) as the group's active processor; "
               "state restored from the changelog: %(restored)s (%(seconds)s s)")
    thing, unit, doc = "became_active", "times", "Times this processor was handed the input"
    labels = ("restored",)


class ShareTaken(Event):
    level = logging.INFO
    message = ("Holding %(partitions)s input partitions, %(evidence)s of them evidence partitions; "
               "%(restored)s restored from their changelog (%(seconds)s s)")
    thing, unit, doc = "shares_taken", "times", "Assignments taken while sharing the join"


class BecameStandby(Event):
    level = logging.INFO
    message = "Standing by: another member of %(group)s reads the input"
    thing, unit, doc = "became_standby", "times", "Times this processor gave the input up (or joined as a standby)"


class StateFenced(Event):
    level = logging.WARNING
    message = "Dropped the join state and rejoining the group: %(reason)s"
    thing, unit, doc = "fenced", "times", "Times another member wrote the join state while this one held it"
