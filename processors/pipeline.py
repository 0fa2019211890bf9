"""Normalise and join without Kafka: what the processor does to each message, as a pure
core the service, the tests and the benchmark all drive the same way.

`handle(kind, value, now)` takes one input message; `deployment(value)` one message from
the deployments topic; `sweep(now)` settles what passed its join window; `take()` returns
everything to produce since the last call. Nothing here talks to the network.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict, defaultdict
from typing import Any, Iterable

from nimtrail.config import ProcessorConfig, RetentionConfig
from nimtrail.deployments.findings import check_observation
from nimtrail.errors import NimtrailError, PermanentError
from nimtrail.ops import StageMetrics
from processors import clock, normalize, trace_spans
from processors.bounds import Bounds
from processors.content import ContentPolicy
from processors.events import (DeploymentRegistered, EvidenceJoined, FieldTruncated, FindingRaised,
                               LateDuplicatesIgnored, LogLinesRead, MetricPointsSkipped, RecordsEmitted,
                               RecordsSettled, StateChanged, StateEvicted, StateFull)
from processors.join import Joiner

log = logging.getLogger(__name__)

# Deployment findings recently produced, by id: the same drift reported on every poll is
# produced once. Forgetting (or a restart) only produces one again, which the warehouse
# absorbs: its id and version are the same.
REPORTED_FINDINGS_KEPT = 4096
# The latest observation of each NIM and what it was judged to be. A registration often
# comes after the NIM it describes started (an operator registers what is deployed; a
# rollout is registered once it is done), so each new deployment version judges these
# again: a finding it no longer supports is produced once more, resolved.
OBSERVATIONS_KEPT = 1024


@dataclasses.dataclass
class Outputs:
    records: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    observations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    log_events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejected: list[tuple[str, bytes, PermanentError]] = dataclasses.field(default_factory=list)  # source

    def __len__(self) -> int:
        return (sum(len(v) for v in self.records.values()) + len(self.observations)
                + len(self.log_events) + len(self.rejected))


class Pipeline:
    def __init__(self, config: ProcessorConfig = ProcessorConfig(), metrics: StageMetrics | None = None,
                 retention: RetentionConfig | None = None, joiner: Joiner | None = None):
        """`retention`: the warehouse's, whose longest class bounds how old an input time
        may be (processor.clock.max_age 0). `joiner`: what evidence goes to (a joiner of
        its own unless given: processors/partitions.py gives joiners of shares)."""
        self.policy = ContentPolicy(config.content)
        self.bounds = Bounds(config.limits)
        self.clock_limits = clock.ClockLimits.of(config.clock, retention)
        self.joiner = joiner or Joiner(config)
        self.metrics = metrics or StageMetrics("processor")
        self._out = Outputs()
        self._evidence_counts: dict[str, int] = defaultdict(int)
        self._reported: OrderedDict[str, None] = OrderedDict()
        self._judged: OrderedDict[tuple, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = OrderedDict()

    def handle(self, kind: str, value: bytes, now: float, source: str = "",
               received: float | None = None) -> None:
        """One input message of `kind` (normalize.SPANS / NIMLOGS / SCRAPES / OTLP_LOGS /
        OTLP_METRICS) from the topic `source`, received (Unix seconds: its Kafka timestamp)
        at `received` (None: now by the wall clock; `now` is the join's clock). Bad input is
        collected in `rejected` for the dead-letter topic, never raised."""
        try:
            found = normalize.normalise(kind, value, self.policy, clock.Clock(self.clock_limits, received))
            # Before anything joins or keeps it: no value may outgrow its field (bounds.py).
            self.bounds.normalised(found)
        except PermanentError as e:
            self._out.rejected.append((source or kind, value, e))
            return
        except Exception as e:  # noqa: BLE001 - a normaliser bug must not stop the stage
            log.exception("The %s normaliser failed on a message from %s", kind, source or kind)
            self._out.rejected.append((source or kind, value,
                                       PermanentError("normaliser_error", f"{type(e).__name__}: {e}")))
            return
        for field, count in self.bounds.take_counts().items():
            FieldTruncated(field=field, count=count).emit(self.metrics, log, count)
        if found.evidence:
            spans = trace_spans.span_records(found.evidence)
            if spans:
                clock.stamp(spans)
                self._out.records["span"].extend(spans)
            self.joiner.add(found.evidence, now)
            for item in found.evidence:
                self._evidence_counts[item.source] += 1
        for identities, items in found.unplaced:
            self._place(identities, items)
        for doc in found.reported:
            self._check(doc, source or kind, value)
        if found.samples:
            clock.stamp(found.samples)
            self._out.records["metric_sample"].extend(found.samples)
        if found.findings:
            clock.stamp(found.findings)
            self._out.records["finding"].extend(found.findings)
            for finding in found.findings:
                FindingRaised(kind=finding["kind"], status="open",
                              subject=",".join(finding["subject_ids"])).emit(self.metrics, log)
        self._out.observations.extend(found.observations)
        self._out.log_events.extend(found.log_events)
        for line_kind, count in found.line_counts.items():
            LogLinesRead(kind=line_kind, count=count).emit(self.metrics, log, count)
        for reason, count in found.skipped_points.items():
            MetricPointsSkipped(reason=reason, count=count).emit(self.metrics, log, count)

    def _check(self, observation: dict[str, Any], source: str, value: bytes) -> None:
        """Drift or unknown_deployment for what a running NIM reported, against the
        deployment version in force when it reported it."""
        try:
            findings = check_observation(self.joiner.registry, observation)
        except NimtrailError as e:  # an observed_at that is not a time
            self._out.rejected.append((source, value, PermanentError("malformed_observation", str(e))))
            return
        except Exception as e:  # noqa: BLE001 - a checker bug must not stop the stage
            log.exception("Checking an observation from %s failed", source)
            self._out.rejected.append((source, value, PermanentError("checker_error", f"{type(e).__name__}: {e}")))
            return
        key = (observation.get("endpoint"), observation.get("deployment"), observation.get("source"))
        self._judged[key] = (observation, {f["finding_id"]: f for f in findings})
        self._judged.move_to_end(key)
        if len(self._judged) > OBSERVATIONS_KEPT:
            self._judged.popitem(last=False)
        self._emit(findings)

    def _emit(self, findings: list[dict[str, Any]], status: str = "open") -> None:
        for finding in findings:
            if status == "open" and finding["finding_id"] in self._reported:
                self._reported.move_to_end(finding["finding_id"])
                continue
            self._reported[finding["finding_id"]] = None
            if len(self._reported) > REPORTED_FINDINGS_KEPT:
                self._reported.popitem(last=False)
            finding["observed_at"] = None  # stamped: when the pipeline saw it
            clock.stamp([finding])
            self._out.records["finding"].append(finding)
            FindingRaised(kind=finding["kind"], status=status,
                          subject=",".join(finding["subject_ids"])).emit(self.metrics, log)

    def _rejudge(self) -> None:
        """Judge the kept observations again after a new deployment version arrived."""
        for key, (observation, earlier) in list(self._judged.items()):
            try:
                found = {f["finding_id"]: f for f in check_observation(self.joiner.registry, observation)}
            except Exception:  # noqa: BLE001 - it was judged before; a failure then was reported then
                continue
            self._emit([f for fid, f in found.items() if fid not in earlier])
            self._emit([{**f, "version": (f.get("version") or 1) + 1,
                         "detail": {**f["detail"], "status": "resolved",
                                    "resolved_by": "a deployment version registered later covers it"}}
                        for fid, f in earlier.items() if fid not in found], status="resolved")
            self._judged[key] = (observation, found)

    def _place(self, identities: list[str], items: list[dict[str, Any]]) -> None:
        """Samples and observations that came with identities but no deployment (OTLP
        resources) get the deployment those identities name now. Unlike a call they are
        not re-joined when a deployment is registered later: a sample never changes."""
        for item in items:
            field = "deployment_id" if "deployment_id" in item else "deployment"
            matched = self.joiner.registry.match(identities, item.get("ts") or item.get("observed_at"))
            if item.get(field) is None and matched is not None:
                item[field] = matched[0]

    def deployment(self, value: bytes, passthrough: bool = True, source: str = "deployments") -> None:
        """One message of the deployments topic: registered for the join and, unless it
        was passed through before a restart (`passthrough` False), passed on to the audit
        topic — or, if it is not a usable record, to the dead-letter topic."""
        try:
            found = normalize.normalise(normalize.DEPLOYMENTS, value, self.policy)
            for record in found.deployments:
                if self.joiner.add_deployment(record, mark=passthrough):
                    DeploymentRegistered(deployment=record["deployment_id"],
                                         version=record["version"]).emit(self.metrics, log)
                    self._rejudge()
        except PermanentError as e:
            if passthrough:  # else it went to the dead-letter topic before the restart
                self._out.rejected.append((source, value, e))
            return
        except ValueError as e:
            if passthrough:
                self._out.rejected.append((source, value, PermanentError("invalid_deployment", str(e))))
            return
        if passthrough:
            self._out.records["deployment"].extend(found.deployments)

    def sweep(self, now: float) -> None:
        settled = self.joiner.sweep(now)
        if settled:
            RecordsSettled(count=settled).emit(self.metrics, log, settled)

    def take(self) -> Outputs:
        """Everything to produce since the last call (the joiner's changed records too)."""
        for kind, record in self.joiner.flush():
            self._out.records[kind].append(record)
            if kind == "finding":
                FindingRaised(kind=record["kind"], status=record["detail"].get("status"),
                              subject=",".join(record["subject_ids"])).emit(self.metrics, log)
        for source, count in self._evidence_counts.items():
            EvidenceJoined(kind=source, count=count).emit(self.metrics, log, count)
        self._evidence_counts.clear()
        for kind, batch in self._out.records.items():
            if batch:
                RecordsEmitted(kind=kind, count=len(batch)).emit(self.metrics, log, len(batch))
        out, self._out = self._out, Outputs()
        return out

    def state_changes(self, rewrite: Iterable[str] = ()) -> list[tuple[str, bytes | None]]:
        """The joiner's changelog entries since the last call (the state held to its caps,
        `rewrite` written again), with what left the state counted and its size on /metrics."""
        changes = self.joiner_changes(self.joiner, rewrite)
        self.report_state()
        return changes

    def joiner_changes(self, j: Joiner, rewrite: Iterable[str] = ()) -> list[tuple[str, bytes | None]]:
        """`j`'s changelog entries since the last call, with what left its state counted
        (one joiner's, or one evidence partition's: processors/partitioned_loop.py)."""
        changes = j.state_changes(rewrite)
        if changes:
            StateChanged(count=len(changes)).emit(self.metrics, log, len(changes))
        for reason, count in j.evicted.items():
            StateEvicted(reason=reason, count=count).emit(self.metrics, log, count)
        j.evicted.clear()
        if j.settled_early:
            StateFull(count=j.settled_early).emit(self.metrics, log, j.settled_early)
            j.settled_early = 0
        if j.late_duplicates:
            LateDuplicatesIgnored(count=j.late_duplicates).emit(self.metrics, log, j.late_duplicates)
            j.late_duplicates = 0
        return changes

    def reject(self, source: str, value: bytes, error: PermanentError) -> None:
        """A message that is not what its topic carries: to the dead-letter topic."""
        self._out.rejected.append((source, value, error))

    def report_state(self) -> None:
        entries, size, forgotten = self.joiner.sizes()
        self.metrics.gauge("state", "entries", "Entries in the join state").set(entries)
        self.metrics.gauge("state", "bytes", "Encoded size of the join state's entries").set(size)
        self.metrics.gauge("forgotten", "evidence", "Evidence ids of records that left the join state, still known"
                           ).set(forgotten)
