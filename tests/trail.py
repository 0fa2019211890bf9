"""The audit trail as the warehouse keeps it: the highest version of every record."""

from __future__ import annotations

from typing import Any, Iterable

from nimtrail import records
from nimtrail.config import ProcessorConfig
from processors import normalize
from processors.pipeline import Outputs, Pipeline


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "observed_at"}


class Trail:
    """Reduces emitted records by the warehouse's rule, and checks the rule is safe: two
    emissions with the same key and version must be the same record."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, kind: str, record: dict[str, Any]) -> None:
        key = (kind, records.key_of(kind, record))
        current = self.kept.get(key)
        if current is None or record["version"] > current["version"]:
            self.kept[key] = _comparable(record)
        elif record["version"] == current["version"]:
            assert _comparable(record) == current, (
                f"{kind} {key[1]} emitted twice with version {record['version']} but different content:\n"
                f"{current}\n{_comparable(record)}")

    def add_outputs(self, outputs: Outputs) -> None:
        for kind, batch in outputs.records.items():
            for record in batch:
                self.add(kind, record)

    def content(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every kept record without its version: what it says, not how often it was rebuilt."""
        return {key: {k: v for k, v in record.items() if k != "version"} for key, record in self.kept.items()}

    def of(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: r for (rk, k), r in self.kept.items() if rk == kind}


def run(messages: Iterable[tuple[str, bytes]], config: ProcessorConfig, *, settle_at: float | None = 1e6,
        pipeline: Pipeline | None = None, trail: Trail | None = None) -> tuple[Trail, Pipeline]:
    """Feed messages one by one (taking the outputs after each, as the service does per
    batch), then let every join window pass at `settle_at`."""
    pipeline = pipeline or Pipeline(config)
    trail = trail or Trail()
    for kind, value in messages:
        if kind == normalize.DEPLOYMENTS:
            pipeline.deployment(value)
        else:
            pipeline.handle(kind, value, 0.0)
        trail.add_outputs(pipeline.take())
    if settle_at is not None:
        pipeline.sweep(settle_at)
        trail.add_outputs(pipeline.take())
    return trail, pipeline
