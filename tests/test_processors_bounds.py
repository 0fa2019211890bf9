"""Bounds at ingest (processors/bounds.py): cut values are provable, deterministic, and no
record built from bounded fields can outgrow a Kafka message."""

from __future__ import annotations

import hashlib

import pytest

from nimtrail import records
from nimtrail.config import RECORD_BUDGET, LimitsConfig, ProcessorConfig, build_section
from nimtrail.errors import ConfigError
from processors.bounds import Bounds, encoded_size
from processors.loop import MAX_BATCH_BYTES, encode_batches

POISON = "\x01" * (3 * 1024 * 1024)


def test_a_cut_value_keeps_a_prefix_and_names_the_originals_size_and_hash():
    bounds = Bounds(LimitsConfig())
    cut = bounds.value(POISON, 1024, "caller")
    prefix, _, tail = cut.partition("…truncated")
    assert set(prefix) == {"\x01"} and encoded_size(cut) <= 1024  # escaping counted
    assert tail == f", {len(POISON)} bytes, sha256:{hashlib.sha256(POISON.encode()).hexdigest()}"
    assert bounds.value(POISON, 1024, "caller") == cut  # a cut join key still joins
    assert bounds.take_counts() == {"caller": 2}


def test_deep_and_wide_structures_are_bounded_by_their_field():
    bounds = Bounds(LimitsConfig(depth=4))
    deep: object = "bottom"
    for _ in range(200):
        deep = [deep]
    wide = {f"k{i}": "x" * 100 for i in range(10_000)}
    for value in (deep, wide, [POISON] * 5):
        bounded = bounds.value(value, 16 * 1024, "labels")
        assert encoded_size(bounded) <= 16 * 1024
        assert "…truncated" in records.canonical_bytes(bounded).decode()


@pytest.mark.parametrize("kind", ["model_call", "tool_action", "metric_sample"])
def test_no_record_of_bounded_fields_outgrows_a_kafka_message(kind):
    # The most each field may take, every field at once, every character escaped.
    bounds = Bounds(LimitsConfig(content=4 * 1024 * 1024, name=64 * 1024, text=64 * 1024))
    record = bounds.record({field: POISON for field in records.FIELDS[kind]})
    assert encoded_size(record) <= RECORD_BUDGET < MAX_BATCH_BYTES
    values, dropped = encode_batches(kind, [record])
    assert len(values) == 1 and dropped == 0 and len(values[0]) <= MAX_BATCH_BYTES


def test_limits_that_could_outgrow_a_message_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="processor.limits.name"):
        build_section(ProcessorConfig, {"limits": {"name": 10}}, "processor")
    with pytest.raises(ConfigError, match="processor.limits: three content fields"):
        build_section(ProcessorConfig, {"limits": {"content": 4 * 1024 * 1024, "text": 256 * 1024}},
                      "processor")
    with pytest.raises(ConfigError, match="processor.limits.colour: unknown key"):
        build_section(ProcessorConfig, {"limits": {"colour": 1}}, "processor")
