"""The joiner's central promise, checked by Hypothesis without Kafka: whatever the order in
which input arrives and however often any of it is re-delivered, the audit trail the
warehouse ends up with (the highest version of every record) is the same."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from nimtrail.config import ProcessorConfig
from tests import corpus, trail

CONFIG = ProcessorConfig(address_map=corpus.ADDRESS_MAP)
CORPUS = corpus.build(split_spans=True)
REFERENCE, _ = trail.run(CORPUS.messages, CONFIG)
UNSETTLED, _ = trail.run(CORPUS.messages, CONFIG, settle_at=None)


@st.composite
def deliveries(draw: st.DrawFn) -> list[int]:
    """A delivery order of the corpus: a permutation, with some messages re-delivered
    (before or after their first delivery)."""
    n = len(CORPUS.messages)
    order = draw(st.permutations(range(n)))
    repeats = draw(st.lists(st.integers(0, n - 1), max_size=n // 2))
    out = list(order)
    for index in repeats:
        out.insert(draw(st.integers(0, len(out))), index)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_any_order_and_any_duplication_give_the_same_trail(order: list[int]) -> None:
    got, _ = trail.run([CORPUS.messages[i] for i in order], CONFIG)
    assert got.kept.keys() == REFERENCE.kept.keys()
    for key, record in REFERENCE.kept.items():
        assert got.kept[key] == record, f"{key} differs"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_joins_converge_before_any_join_window_passes(order: list[int]) -> None:
    """The same without the final sweep: links, versions and deployments must converge on
    their own, not because settling re-materialises everything."""
    got, _ = trail.run([CORPUS.messages[i] for i in order], CONFIG, settle_at=None)
    assert got.kept == UNSETTLED.kept


def test_the_reference_trail_says_what_the_corpus_means() -> None:
    """The property above would hold for a joiner that joins nothing; this pins what the
    converged trail must contain."""
    calls, actions = REFERENCE.of("model_call"), REFERENCE.of("tool_action")
    findings = {(f["kind"], tuple(f["subject_ids"])) for f in REFERENCE.of("finding").values()}
    ids = CORPUS.ids
    incident = calls[ids["incident"]["call_id"]]
    assert (incident["deployment_id"], incident["deployment_version"]) == ("prod/llama-3-1-8b", 1)
    assert incident["caller"] == "alice" and incident["ttft_ms"] == 42.0
    after = calls[ids["after"]["call_id"]]
    assert after["deployment_version"] == 2 and after["caller"] == "bob"  # from invoke_agent
    assert actions[ids["incident"]["action_id"]]["call_id"] == ids["incident"]["call_id"]
    assert actions[ids["after"]["action_id"]]["call_id"] == ids["after"]["call_id"]  # by parentage
    subjects = (ids["incident"]["action_id"], ids["incident"]["call_id"])
    assert ("ungated_action", subjects) in findings and ("purpose_violation", subjects) in findings
    assert ("ungated_action", (ids["after"]["action_id"], ids["after"]["call_id"])) not in findings  # human gate
    mistral = ids["mistral"]
    assert ("unauthorized_client", (mistral["call_id"],)) in findings
    assert ("unlisted_tool_server", (mistral["action_id"], mistral["call_id"])) in findings
    assert ("unattributed_action", (ids["orphan"]["action_id"],)) in findings
    assert ("unknown_deployment", (ids["unknown"]["call_id"],)) in findings
    assert calls[ids["logs"]["call_id"]]["caller"] == "batch-jobs"  # address map
    assert calls[ids["gateway"]["call_id"]]["caller"] == "carol"  # gateway log
    assert calls[ids["failed"]["call_id"]]["status"] == "error"
