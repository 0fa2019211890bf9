"""The processor with the join split over the evidence topic's partitions (processor.partitions).

Every member of the group is handed, by Kafka's range assignor, a share of the raw input
topics' partitions and a share of the evidence topic's. In one polled batch it

- normalises its raw messages (stateless: the same message gives the same evidence on any
  member) and places their evidence by trace or record key (processors/partitions.py);
- folds the evidence of its evidence partitions into each one's joiner, which sends what
  the other partitions need (a call's evidence to and from its home, links, subscriptions)
  back to the evidence topic;
- then delivers as the one-joiner loop does (processors/loop.py): 1.–2. records, stateless
  outputs and evidence produced and acknowledged; 3. each evidence partition's changed
  state to the same partition of the evidence state topic (compacted), fenced per
  partition by its end offset as the one-joiner loop fences its changelog; 4. the input
  offsets, raw and evidence together, committed.

A crash anywhere repeats evidence, never loses it, and evidence seen twice changes nothing;
so the trail stays exact, as with one joiner. A partition handed to this member is restored
from its changelog partition, unless the state held is still that partition's latest; one
taken away is dropped. Static membership (the instance id) keeps a restart from moving
partitions: a member back within its session gets its own again.

Every member reads the whole deployments topic (a global table); the member holding
evidence partition 0 passes it through to the audit topic, and keeps how far it has in
that partition's changelog.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

import orjson
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import TopicPartition

from nimtrail import heap, kafka_io
from nimtrail.errors import PermanentError
from nimtrail.kafka_io import read_to_end
from processors.evidence import Evidence
from processors.events import (BecameStandby, EvidenceSentAway, MessagesConsumed, ShareTaken, StateFenced,
                               StateRestored)
from processors.loop import Fenced, Message, Processor, StateWrite, fitting_documents
from processors.partitions import EVIDENCE_HOPS, Partitioned, from_wire, wire_form
from processors.pipeline import Pipeline
from processors.horizon import Horizon
from processors.state import StateStore, read_partitions

log = logging.getLogger(__name__)

EVIDENCE_PER_MESSAGE = 1000


class Share(NamedTuple):
    """An evidence partition this member joins: its changelog, and the changelog's end
    offset as of this member's last read or write of it (the fence)."""
    store: StateStore
    end: int


def encode_evidence(items: list[Evidence]) -> list[bytes]:
    """Evidence as messages of the evidence topic (partitions.wire_form), halved until each fits."""
    out = []
    for start in range(0, len(items), EVIDENCE_PER_MESSAGE):
        out += fitting_documents({"evidence": wire_form(items[start:start + EVIDENCE_PER_MESSAGE])}, "evidence")
    return out


def decode_evidence(value: bytes) -> list[Evidence]:
    """PermanentError for a message that is not evidence (only processors write here)."""
    try:
        return from_wire(orjson.loads(value)["evidence"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PermanentError("malformed_evidence", f"{type(e).__name__}: {e}") from e


class PartitionedProcessor(Processor):
    @property
    def state_topic(self) -> str:
        return self.config.topics.processor_evidence_state

    @property
    def subscribed(self) -> list[str]:
        return sorted([*self.kinds, self.config.topics.processor_evidence])

    def _ensure_topics(self) -> None:
        super()._ensure_topics()
        t, count = self.config.topics, self.config.processor.partitions
        kafka_io.ensure_topics(self.config, [t.processor_evidence], compacted=[t.processor_evidence_state],
                               partitions={t.processor_evidence: count, t.processor_evidence_state: count})

    def _assignor(self) -> AbstractPartitionAssignor:
        return RangePartitionAssignor

    def __init__(self, config, stop=None):
        self.shares: dict[int, Share] = {}
        self._inputs: list[TopicPartition] | None = None  # every partition the group reads
        self._admin = None
        self._committed: tuple[float, dict] = (float("-inf"), {})  # (asked at, the group's offsets)
        self._compaction_tuned = False
        super().__init__(config, stop)
        self._passed: dict[int, int] = {}
        self._passed_dirty = False
        # The registry is needed from the first raw message on (normalising places
        # samples by deployment), not only once a partition of the join is held.
        self.deployments = kafka_io.consumer(config, group_id=None)
        for message in read_to_end(self.deployments, config.topics.deployments):
            self._deployment(message)
        self.pipeline.take()  # nothing is passed through before partition 0 is held

    def _drop_state(self) -> None:
        self.joined = Partitioned(self.config.processor, self.config.processor.partitions, held=())
        self.pipeline = Pipeline(self.config.processor, self.metrics, self.config.warehouse.retention,
                                 joiner=self.joined)
        self.horizon = Horizon(interval=min(1.0, self.joined.window / 4), hops=EVIDENCE_HOPS)
        self.shares = {}

    def _set_active(self, active: bool) -> None:
        self.active = active
        self.metrics.gauge("active", "members", "1 while this processor holds input partitions, 0 while it "
                           "holds none").set(1 if active else 0)

    # -- membership -------------------------------------------------------------------------

    def _assigned(self, assigned: set) -> None:
        started = time.monotonic()
        evidence = {tp.partition for tp in assigned if tp.topic == self.config.topics.processor_evidence}
        for partition in set(self.shares) - evidence:
            self._release(partition)
        ends = self._changelog_ends() if evidence else {}
        restored = [p for p in sorted(evidence)
                    if p not in self.shares or ends[TopicPartition(self.state_topic, p)] != self.shares[p].end]
        if restored:
            if not self._compaction_tuned:
                StateStore(self.config, partition=0).tune_compaction()
                self._compaction_tuned = True
            changelogs = read_partitions(self.config, self.state_topic, restored)
        for partition in restored:
            self._restore_share(partition, ends[TopicPartition(self.state_topic, partition)],
                                changelogs.get(partition, []))
        if restored:
            self.metrics.gauge("restore", "seconds", "How long the last start took to read the join state back"
                               ).set(time.monotonic() - started)
            try:
                self._deliver(self.pipeline.take())  # what deployments registered since change
            except Fenced as e:
                self._fenced(e)
                return
        self._set_active(bool(assigned))
        if assigned:
            ShareTaken(partitions=len(assigned), evidence=len(evidence), restored=len(restored),
                       seconds=round(time.monotonic() - started, 3)).emit(self.metrics, log)
        else:
            BecameStandby(group=self.config.processor.group_id).emit(self.metrics, log)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        super().close()

    def _release(self, partition: int) -> None:
        if self.shares.pop(partition, None) is not None:
            self.joined.release(partition)
            heap.trim()

    def _restore_share(self, partition: int, end: int, changelog: list) -> None:
        """Restore `partition` from its changelog's messages (read to `end`)."""
        started = time.monotonic()
        self._release(partition)
        store = StateStore(self.config, partition=partition)
        entries, meta = store.restore(changelog)
        joiner = self.joined.hold(partition)
        count = joiner.restore(entries, time.time())
        del entries
        # Its state was written by whoever held it, with the deployments known then.
        joiner.mark_deployment(self.joined.registry.identities())
        self.shares[partition] = Share(store, end)
        StateRestored(count=count, topic=f"{store.topic}[{partition}]",
                      seconds=time.monotonic() - started).emit(self.metrics, log, count)
        if partition == 0:
            self._pass_deployments_from({int(p): o for p, o in (meta.get("deployments") or {}).items()})

    def _pass_deployments_from(self, passed: dict[int, int]) -> None:
        """Holding partition 0: pass through what the last holder had not."""
        reader = kafka_io.consumer(self.config, group_id=None)
        try:
            for message in read_to_end(reader, self.config.topics.deployments):
                if message.offset >= passed.get(message.partition, 0) and message.value is not None:
                    self.pipeline.deployment(message.value, passthrough=True, source=message.topic)
                passed[message.partition] = max(passed.get(message.partition, 0), message.offset + 1)
        finally:
            reader.close(autocommit=False)
        self._passed, self._passed_dirty = passed, True

    def _deployment(self, message: Any) -> None:
        if message.value is None:
            return
        passthrough = 0 in self.shares and message.offset >= self._passed.get(message.partition, 0)
        self.pipeline.deployment(message.value, passthrough=passthrough, source=message.topic)
        if passthrough:
            self._passed[message.partition] = message.offset + 1
            self._passed_dirty = True

    def _fenced(self, error: Fenced) -> None:
        """Another member writes a partition's state. The changes of this batch were taken
        from every joiner and written for none: all are dropped, restored when the group
        hands them out again (from the offsets last committed)."""
        StateFenced(reason=str(error)).emit(self.metrics, log)
        for partition in list(self.shares):
            self._release(partition)
        self._rejoin()

    def _check_assignment(self) -> None:
        pass  # members share the partitions: no one of them must hold all

    def _watched(self, now: float) -> tuple[list, Callable[[TopicPartition], int]] | None:
        """As the one-joiner loop's (processors/horizon.py), over every partition of the raw
        topics and of the evidence topic, not only this member's: a call's counterpart may
        wait in any of them (a member that died holds its share unread until the group
        hands it on). Other members' partitions count as read up to the group's committed
        offsets, which trail what was read by at most a batch."""
        mine = self.consumer.assignment()
        if not mine:
            return None
        if self._inputs is None:
            self._inputs = [tp for topic in self.subscribed for tp in kafka_io.partitions_of(self.offsets, topic)]
        deployments = self.deployments.assignment()

        def position(tp: TopicPartition) -> int:
            if tp in deployments:
                return self.deployments.position(tp)
            if tp in mine:
                return self.consumer.position(tp)
            return self._group_offsets(now).get(tp, 0)

        return [*self._inputs, *deployments], position

    def _group_offsets(self, now: float) -> dict:
        """The group's committed offsets, asked at most once per horizon interval."""
        if now - self._committed[0] >= self.horizon.interval:
            if self._admin is None:
                self._admin = kafka_io.admin_client(self.config)
            group = self.config.processor.group_id
            offsets = self._admin.list_group_offsets({group: None})[group]
            self._committed = (now, {tp: meta.offset for tp, meta in offsets.items()})
        return self._committed[1]

    # -- the loop ---------------------------------------------------------------------------

    def _consume(self, polled: dict, now: float) -> int:
        evidence_topic = self.config.topics.processor_evidence
        assigned = self.consumer.assignment()
        count = 0
        for tp, messages in polled.items():
            if tp not in assigned:
                continue  # taken away during this batch's polls: its next holder reads it again
            if tp.topic != evidence_topic:
                count += self._normalise(tp, messages, now)
                continue
            if tp.partition not in self.shares:
                continue  # released when fenced (_fenced), until the group hands it out again
            for message in messages:
                try:
                    items = decode_evidence(message.value or b"")
                except PermanentError as e:
                    self.pipeline.reject(tp.topic, message.value or b"", e)
                    continue
                self.joined.deliver(tp.partition, items, now)
            count += len(messages)
            MessagesConsumed(topic=tp.topic, count=len(messages)).emit(self.metrics, log, len(messages))
        return count

    def _handed_on(self) -> list[Message]:
        """The evidence the joiners send partitions held elsewhere, produced with the outputs."""
        topic = self.config.topics.processor_evidence
        for (by, source), count in self.joined.sent_away.items():
            EvidenceSentAway(by=by, source=source, count=count).emit(self.metrics, log, count)
        self.joined.sent_away.clear()
        return [Message(topic, None, value, None, partition)
                for partition, items in sorted(self.joined.take_pending().items())
                for value in encode_evidence(items)]

    def _state_writes(self) -> list[StateWrite]:
        """Each partition's state, for its own changelog partition."""
        writes = []
        for partition, share in sorted(self.shares.items()):
            write = self._state_change(share.store, self.joined.joiners[partition], meta=partition == 0)
            if write is not None:
                writes.append(write)
        self.pipeline.report_state()
        return writes

    def _check_fence(self, writes: list[StateWrite]) -> None:
        """Each partition fenced by its own end: another member wrote it."""
        ends = self._changelog_ends()
        fenced = [w.store.partition for w in writes
                  if ends[TopicPartition(self.state_topic, w.store.partition)] != self.shares[w.store.partition].end]
        if fenced:
            raise Fenced(f"the join state of evidence partitions {fenced} was written by another member")

    def _state_written(self, writes: list[StateWrite], acked: list) -> None:
        last = {}
        for metadata in acked:
            last[metadata.partition] = max(last.get(metadata.partition, 0), metadata.offset + 1)
        for w in writes:
            share = self.shares[w.store.partition]
            self.shares[w.store.partition] = Share(share.store, last.get(w.store.partition, share.end))
