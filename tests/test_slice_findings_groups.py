"""Repeated findings, end to end on real components: agents whose clock says year 2554 send
spans through the collector, two batches apart; every span time raises a `clock_skew`
finding, and `nimtrail findings` (the CLI as a user runs it) shows them as one line with
their count, first and last seen, while `--each` lists every one."""

from __future__ import annotations

import json
import uuid

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from tests.harness import wait_for

FAR_NS = 2**64 - 2_000_000  # 2554: outside what the pipeline accepts around the receive time
SPANS = 6  # per batch; each span sends two times (start and end) the pipeline replaces


def _send_far_spans(endpoint: str) -> list[str]:
    """One OTLP export of SPANS chat spans dated 2554; their response ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": "skewed-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces",
                                                                    timeout=10)))
    tracer = provider.get_tracer("agent")
    call_ids = [f"chatcmpl-{uuid.uuid4().hex}" for _ in range(SPANS)]
    for i, call_id in enumerate(call_ids):
        span = tracer.start_span("chat meta/llama-3.1-8b-instruct", kind=SpanKind.CLIENT,
                                 start_time=FAR_NS + i,
                                 attributes={"gen_ai.operation.name": "chat", "gen_ai.response.id": call_id,
                                             "gen_ai.request.model": "meta/llama-3.1-8b-instruct"})
        span.end(end_time=FAR_NS + i + 1)
    provider.force_flush()
    provider.shutdown()
    return call_ids


def test_repeated_findings_are_one_group_and_each_one_is_kept(env):
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)

    def skew_groups(expected: int):
        def found():
            groups = json.loads(env.cli("findings", "--kind", "clock_skew", "--json").stdout)["rows"]
            return groups if groups and groups[0]["count"] == expected else None
        return wait_for(found, timeout=90, interval=0.5, what=f"{expected} clock_skew findings")

    first = _send_far_spans(env.otlp_http)
    skew_groups(2 * SPANS)
    second = _send_far_spans(env.otlp_http)  # a later message: a later receive time
    (group,) = skew_groups(4 * SPANS)

    each = json.loads(env.cli("findings", "--each", "--kind", "clock_skew", "--json", "--limit", "100").stdout)
    rows = each["rows"]
    assert len(rows) == 4 * SPANS and each["next_offset"] is None
    assert {s for r in rows for s in r["subject_ids"]} >= set(first + second)  # each call reachable
    times = sorted(r["detected_at"] for r in rows)
    assert times[0] < times[-1]
    assert (group["first_seen"], group["last_seen"]) == (times[0], times[-1])
    assert group["open"] == 4 * SPANS and group["severity"] == "low"
    assert group["latest"]["detected_at"] == times[-1]
    assert set(group["latest"]["subject_ids"]) & set(second)  # the latest example is of the later batch

    # The table a person reads: one line for all of them, with the count.
    table = env.cli("findings").stdout
    lines = [line for line in table.splitlines() if "clock_skew" in line]
    assert len(lines) == 1 and f" {4 * SPANS} " in lines[0], table
    assert "--each" in table
    listed = env.cli("findings", "--each", "--kind", "clock_skew", "--limit", "100").stdout
    assert sum("clock_skew" in line for line in listed.splitlines()) == 4 * SPANS
