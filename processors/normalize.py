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
from processors import nimlogs, scrapes, spans
from processors.content import ContentPolicy
from processors.evidence import Evidence

SPANS, NIMLOGS, SCRAPES, DEPLOYMENTS = "spans", "nimlogs", "scrapes", "deployments"


@dataclasses.dataclass
class Normalised:
    evidence: list[Evidence] = dataclasses.field(default_factory=list)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    deployments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    observation: dict[str, Any] | None = None
    log_events: dict[str, Any] | None = None
    line_counts: dict[str, int] = dataclasses.field(default_factory=dict)


def normalise(kind: str, value: bytes, policy: ContentPolicy) -> Normalised:
    """`kind` is one of SPANS, NIMLOGS, SCRAPES, DEPLOYMENTS."""
    out = Normalised()
    if kind == SPANS:
        try:
            out.evidence = list(spans.evidence_from_request(value, policy))
        except DecodeError as e:
            raise PermanentError("malformed_protobuf", str(e)) from e
    elif kind == NIMLOGS:
        try:
            doc = raw.decode(value, raw.NIMLOGS_REQUIRED)
        except ValueError as e:
            raise PermanentError("malformed_nimlogs", str(e)) from e
        result = nimlogs.normalise(doc, policy)
        out.evidence, out.samples = result.evidence, result.samples
        out.observation, out.log_events, out.line_counts = result.observation, result.log_events, result.counts
    elif kind == SCRAPES:
        try:
            doc = raw.decode(value, raw.SCRAPES_REQUIRED)
        except ValueError as e:
            raise PermanentError("malformed_scrape", str(e)) from e
        out.samples, malformed = scrapes.normalise(doc)
        if malformed:
            out.line_counts["malformed_sample"] = malformed
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
