"""Per-topic normalisers behind one call: raw message in, what it says out.

Pure: no Kafka, no state. A message that is not what its topic promises raises
PermanentError with a reason; the caller sends it to the dead-letter topic untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import DecodeError

from nimtrail import raw, records
from nimtrail.errors import PermanentError
from processors import nimlogs, otlp_logs, otlp_metrics, scrapes, spans
from processors.clock import Clock, default_clock
from processors.content import ContentPolicy
from processors.evidence import Evidence

SPANS, NIMLOGS, SCRAPES, DEPLOYMENTS = "spans", "nimlogs", "scrapes", "deployments"
OTLP_LOGS, OTLP_METRICS, OBSERVATIONS = "otlp_logs", "otlp_metrics", "observations"


@dataclasses.dataclass
class Normalised:
    evidence: list[Evidence] = dataclasses.field(default_factory=list)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    deployments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    observations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    log_events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    findings: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # clock_skew, from the input's times
    # What running NIMs reported about themselves (read back from the observations topic):
    # the pipeline checks each against the deployment registry.
    reported: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    line_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_points: dict[str, int] = dataclasses.field(default_factory=dict)  # OTLP metrics, by reason
    # (identities, samples and observations among the above that name no deployment): the
    # pipeline places them by the identities against the deployment registry.
    unplaced: list[tuple[list[str], list[dict[str, Any]]]] = dataclasses.field(default_factory=list)

    def add_nimlogs(self, result: nimlogs.NimlogResult, identities: list[str] | None = None) -> None:
        self.evidence += result.evidence
        self.samples += result.samples
        if result.observation:
            self.observations.append(result.observation)
        if result.log_events:
            self.log_events.append(result.log_events)
        for kind, count in result.counts.items():
            self.line_counts[kind] = self.line_counts.get(kind, 0) + count
        if identities:
            unplaced = [s for s in result.samples if s["deployment_id"] is None]
            if result.observation and result.observation["deployment"] is None:
                unplaced.append(result.observation)
            if unplaced:
                self.unplaced.append((identities, unplaced))


def normalise(kind: str, value: bytes, policy: ContentPolicy, clock: Clock | None = None) -> Normalised:
    """`kind` is one of SPANS, NIMLOGS, SCRAPES, OTLP_LOGS, OTLP_METRICS, OBSERVATIONS, DEPLOYMENTS;
    `clock` (the message's receive time and bounds) judges every time the input states."""
    clock = clock or default_clock()
    out = Normalised(findings=clock.findings)
    if kind == SPANS:
        try:
            out.evidence = list(spans.evidence_from_request(value, policy, clock))
        except DecodeError as e:
            raise PermanentError("malformed_protobuf", str(e)) from e
    elif kind == NIMLOGS:
        try:
            doc = raw.decode(value, raw.NIMLOGS_REQUIRED)
        except ValueError as e:
            raise PermanentError("malformed_nimlogs", str(e)) from e
        out.add_nimlogs(nimlogs.normalise(doc, policy, clock=clock))
    elif kind == OTLP_LOGS:
        try:
            found = otlp_logs.normalise(value, policy, clock)
        except DecodeError as e:
            raise PermanentError("malformed_protobuf", f"not an OTLP logs request: {e}") from e
        for resource in found:
            out.add_nimlogs(resource.result, resource.identities)
    elif kind == OTLP_METRICS:
        try:
            found_metrics, counts = otlp_metrics.normalise(value, clock)
        except DecodeError as e:
            raise PermanentError("malformed_protobuf", f"not an OTLP metrics request: {e}") from e
        for resource in found_metrics:
            out.samples += resource.samples
            unplaced = [s for s in resource.samples if s["deployment_id"] is None]
            if unplaced and resource.identities:
                out.unplaced.append((resource.identities, unplaced))
        out.skipped_points = counts
    elif kind == SCRAPES:
        try:
            doc = raw.decode(value, raw.SCRAPES_REQUIRED)
        except ValueError as e:
            raise PermanentError("malformed_scrape", str(e)) from e
        out.samples, malformed = scrapes.normalise(doc, clock)
        if malformed:
            out.line_counts["malformed_sample"] = malformed
    elif kind == OBSERVATIONS:
        try:
            doc = raw.decode(value, raw.OBSERVATIONS_REQUIRED)
        except ValueError as e:
            raise PermanentError("malformed_observation", str(e)) from e
        if not isinstance(doc["facts"], dict) or not isinstance(doc["observed_at"], str):
            raise PermanentError("malformed_observation", "facts must be an object and observed_at a time")
        out.reported.append(doc)
    elif kind == DEPLOYMENTS:
        try:
            batch_kind, found = records.decode_batch(value)
        except ValueError as e:
            raise PermanentError("malformed_deployment", str(e)) from e
        if batch_kind != "deployment":
            raise PermanentError("malformed_deployment", f"expected deployment records, got {batch_kind}")
        out.deployments = found
    else:
        raise ValueError(f"no normaliser for {kind!r}")
    return out
