"""Stage events: every one is counted; one that recurs with every batch while a condition
lasts is logged at most once per its interval, with the amount since its last line."""

import logging

from nimtrail import ops
from processors.events import FindingRaised, StateFull


def _lines(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def _counted(metrics: ops.StageMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_a_recurring_warning_is_logged_once_an_interval_with_everything_since(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(ops.time, "monotonic", lambda: clock[0])
    metrics, log = ops.StageMetrics("processor"), logging.getLogger("test.ops.state_full")
    with caplog.at_level(logging.INFO, logger=log.name):
        for amount in (5, 7, 11):  # three batches within the minute
            StateFull(count=amount).emit(metrics, log, amount)
            clock[0] += 1
        assert _lines(caplog, log.name) == [StateFull.message % {"count": 5}]
        clock[0] += 60
        StateFull(count=2).emit(metrics, log, 2)
    assert _lines(caplog, log.name)[1] == StateFull.message % {"count": 7 + 11 + 2}
    assert _counted(metrics, "nimtrail_processor_settled_early_records_total") == 25  # every batch counted


def test_findings_are_counted_not_logged_one_by_one(caplog):
    metrics, log = ops.StageMetrics("processor"), logging.getLogger("test.ops.findings")
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3):
            FindingRaised(kind="unknown_deployment", status="open", subject="c1").emit(metrics, log)
    assert _lines(caplog, log.name) == []
    assert metrics.registry.get_sample_value("nimtrail_processor_raised_findings_total",
                                             {"kind": "unknown_deployment", "status": "open"}) == 3
