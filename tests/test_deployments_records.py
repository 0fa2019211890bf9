"""Merging fragments into versioned records, diffs, as-of matching, and findings (pure)."""

from pathlib import Path

import pytest

from nimtrail import records
from nimtrail.deployments import (ConflictError, Identity, Registry, VersionError,
                                  check_observation, diff, drift, group, plan, unknown_deployment)

FIXTURES = Path(__file__).parent / "fixtures" / "deployments"
TRT_PROFILE_ID = "8af967d80ae8f30f4635a59b2140fdc2b38d3004e16e66c9667fa032e56497fd"
LLAMA = "prod/llama-3-1-8b"


def register(existing, *paths, deployment=None, now="2026-03-01T10:00:00Z", **kw):
    outcomes = plan(group([FIXTURES / p if isinstance(p, str) else p for p in paths], deployment),
                    existing, now=now, **kw)
    return outcomes, existing + [o.record for o in outcomes if o.changed]


def upgraded_values(tmp_path: Path, tag: str = "1.8.0") -> Path:
    path = tmp_path / "llama-values.yaml"
    path.write_text((FIXTURES / "llama-values.yaml").read_text().replace('tag: "1.3.3"', f'tag: "{tag}"'))
    return path


def test_all_sources_merge_into_one_record_with_every_field_and_its_source():
    (outcome,), _ = register([], "llama-values.yaml", "llama-governance.yaml", "metadata.json",
                             "startup-trtllm.log")
    record = outcome.record
    assert set(record) == set(records.DEPLOYMENT_FIELDS)
    assert (record["deployment_id"], record["version"], record["source"]) == (LLAMA, 1, "helm")
    assert record["valid_from"] == "2026-03-01T10:00:00.000000Z"
    assert record["profile_id"] == TRT_PROFILE_ID and record["nim_release"] == "1.3.3"
    assert record["gpu_device"] == "2330:10de" and record["purpose"].startswith("Customer-support")
    sources = record["field_sources"]
    assert sources["nim_image"] == "helm:llama-values.yaml"
    assert sources["profile_id"] == "nim-metadata:metadata.json + nim-log:startup-trtllm.log"
    assert sources["purpose"] == "manual:llama-governance.yaml"
    assert sources["identities"]["k8s"] == {"prod/llama-3-1-8b-nim-llm": "manual:llama-governance.yaml"}
    assert record["identities"]["service_names"] == ["llama-3-1-8b"]
    assert outcome.changed and {c["field"] for c in outcome.changes} >= {"nim_image", "purpose"}


def test_image_upgrade_makes_version_2_that_differs_only_in_the_image(tmp_path):
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml")
    (outcome,), topic = register(topic, upgraded_values(tmp_path), deployment=LLAMA,
                                 now="2026-03-02T10:00:00Z")
    assert outcome.record["version"] == 2 and outcome.previous["version"] == 1
    assert diff(outcome.previous, outcome.record) == [
        {"field": "nim_image", "from": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3",
         "to": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0"}]
    # The review was carried over, still credited to the governance file.
    assert outcome.record["field_sources"]["purpose"] == "manual:llama-governance.yaml"
    assert outcome.record["identities"] == outcome.previous["identities"]


def test_same_content_again_is_no_new_version(tmp_path):
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml")
    (outcome,), after = register(topic, "llama-values.yaml", deployment=LLAMA, now="2026-03-05T00:00:00Z")
    assert not outcome.changed and outcome.record["version"] == 1 and after == topic
    # A copy under another name is the same content too.
    copy = tmp_path / "renamed.yaml"
    copy.write_text((FIXTURES / "llama-values.yaml").read_text())
    (outcome,), _ = register(topic, copy, deployment=LLAMA, now="2026-03-05T00:00:00Z")
    assert not outcome.changed


def test_a_resupplied_source_replaces_what_it_said_before(tmp_path):
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml")
    trimmed = tmp_path / "values.yaml"
    trimmed.write_text((FIXTURES / "llama-values.yaml").read_text().replace(
        "  - name: NIM_TOOL_CALL_PARSER\n    value: llama3_json\n", ""))
    (outcome,), _ = register(topic, trimmed, deployment=LLAMA, now="2026-03-02T00:00:00Z")
    changed = {c["field"] for c in outcome.changes}
    assert changed == {"env", "tool_calling"}
    assert "NIM_TOOL_CALL_PARSER" not in outcome.record["env"]
    assert outcome.record["tool_calling"] == {"enabled": True}


def test_governance_update_alone_changes_only_governed_review_fields(tmp_path):
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml")
    review = tmp_path / "gov.yaml"
    review.write_text((FIXTURES / "llama-governance.yaml").read_text()
                      .replace("tool_calling_allowed: true", "tool_calling_allowed: false")
                      .replace("  - delete_ticket\n", ""))
    (outcome,), _ = register(topic, review, now="2026-03-02T00:00:00Z")
    assert [c["field"] for c in outcome.changes] == ["tool_calling_allowed", "destructive_tools"]
    assert outcome.record["nim_image"] == outcome.previous["nim_image"]


def test_files_that_disagree_are_refused_naming_both():
    vllm_log = FIXTURES / "startup-vllm.log"
    with pytest.raises(ConflictError) as caught:
        register([], "llama-values.yaml", vllm_log, deployment=LLAMA)
    message = str(caught.value)
    assert "helm:llama-values.yaml says 'tensorrt_llm-h100-fp8-tp2-pp1-throughput'" in message
    assert "nim-log:startup-vllm.log says 'vllm-bf16-tp1-pp1'" in message


def test_valid_from_must_move_forward():
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml")
    with pytest.raises(VersionError, match="is not after version 1"):
        register(topic, FIXTURES / "startup-trtllm.log", deployment=LLAMA,
                 now="2026-03-02T00:00:00Z", valid_from="2026-02-01T00:00:00Z")


def test_a_multi_document_manifest_registers_two_deployments():
    outcomes, _ = register([], "multi-manifests.yaml")
    assert [(o.deployment_id, o.record["version"], o.record["source"]) for o in outcomes] == [
        ("team-a/mistral-7b", 1, "k8s"), ("team-a/qwen-72b", 1, "k8s")]


# ---- as-of matching ---------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path):
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml", now="2026-03-01T10:00:00Z")
    _, topic = register(topic, upgraded_values(tmp_path), deployment=LLAMA, now="2026-03-01T14:00:00Z")
    _, topic = register(topic, "multi-manifests.yaml", "nimservice.yaml", now="2026-03-01T09:00:00Z")
    return Registry(topic)


def test_an_upgrade_mid_day_splits_calls_between_versions(fleet):
    identity = Identity(service_name="llama-3-1-8b")
    assert fleet.match(identity, "2026-03-01T09:59:59Z") is None
    assert fleet.match(identity, "2026-03-01T12:00:00Z") == (LLAMA, 1)
    assert fleet.match(identity, "2026-03-01T14:00:00Z") == (LLAMA, 2)
    assert fleet.as_of(LLAMA, "2026-03-01T13:00:00+00:00")["nim_image"].endswith(":1.3.3")


def test_identities_from_otel_attributes(fleet):
    at = 1_772_370_000_000_000_000  # 2026-03-01T13:00:00Z in Unix ns
    by_k8s = Identity.from_attributes({"k8s.namespace.name": "team-a", "k8s.deployment.name": "mistral-7b"})
    by_pod = Identity.from_attributes({"k8s.namespace.name": "team-a", "k8s.pod.name": "qwen-72b-0"})
    by_host = Identity.from_attributes({}, {"server.address": "MISTRAL.team-a.svc", "server.port": 8000})
    by_model = Identity.from_attributes({}, {"gen_ai.request.model": "nvidia/llama-3.1-nemotron-nano-8b-v1"})
    assert fleet.match(by_k8s, at) == ("team-a/mistral-7b", 1)
    assert fleet.match(by_pod, at) == ("team-a/qwen-72b", 1)
    assert fleet.match(by_host, at) == ("team-a/mistral-7b", 1)
    assert fleet.match(by_model, at) == ("research/nemotron-nano-8b", 1)


def test_longest_pod_prefix_wins_and_shared_models_do_not_match():
    def record(deployment_id, prefixes, models):
        return records.new("deployment", deployment_id=deployment_id, version=1,
                           valid_from="2026-01-01T00:00:00Z",
                           identities={"k8s": [], "pod_prefixes": prefixes, "service_names": [],
                                       "host_ports": [], "model_names": models})
    registry = Registry([record("prod/llama", ["prod/llama-"], ["meta/llama-3.1-8b-instruct"]),
                         record("prod/llama-70b", ["prod/llama-70b-"], ["meta/llama-3.1-8b-instruct"])])
    at = "2026-02-01T00:00:00Z"
    assert registry.match(Identity(namespace="prod", pod="llama-70b-0"), at) == ("prod/llama-70b", 1)
    assert registry.match(Identity(namespace="prod", pod="llama-5f7d9-abcde"), at) == ("prod/llama", 1)
    assert registry.match(Identity(model="meta/llama-3.1-8b-instruct"), at) is None


# ---- findings ---------------------------------------------------------------------------


def observation(**facts):
    return {"schema": 1, "deployment": LLAMA, "source": "nim-metadata", "endpoint": "http://llama:8000",
            "observed_at": "2026-03-01T12:00:00Z", "facts": facts}


def test_drift_when_the_container_runs_another_profile_image_or_model(fleet):
    record = fleet.as_of(LLAMA, "2026-03-01T12:00:00Z")
    assert drift(record, observation(models={"data": [{"id": "meta/llama-3.1-8b-instruct"}]})) == []
    seen = observation(metadata={"selectedModelProfileId": "f" * 64},
                       models={"data": [{"id": "meta/llama-3.1-70b-instruct"}]},
                       image="nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0")
    findings = drift(record, seen)
    fields = {f["detail"]["field"]: f for f in findings}
    # The record has no profile_id (only its name from values), so the id is not compared.
    assert set(fields) == {"nim_image", "model_id"}
    image = fields["nim_image"]
    assert set(image) == set(records.FINDING_FIELDS)
    assert image["kind"] == "deployment_drift" and image["severity"] == "high"
    assert image["subject_ids"] == [f"{LLAMA}@1"]
    assert image["detail"]["reviewed"].endswith(":1.3.3") and image["detail"]["observed"].endswith(":1.8.0")
    assert image["detected_at"] == "2026-03-01T12:00:00.000000Z"
    # Deterministic: the same drift seen later is the same finding.
    later = drift(record, {**seen, "observed_at": "2026-03-01T12:05:00Z"})
    assert sorted(f["finding_id"] for f in later) == sorted(f["finding_id"] for f in findings)


def test_profile_drift_from_a_startup_log_against_a_record_with_a_profile_id():
    (outcome,), _ = register([], "llama-values.yaml", "llama-governance.yaml", "metadata.json")
    log_observation = {"schema": 1, "deployment": LLAMA, "source": "nim-log", "endpoint": "pod/llama-0",
                       "observed_at": "2026-03-02T00:00:00Z",
                       "facts": {"profile_id": "3bb4e8fe78e5037b05dd618cebb1053347325ad6a1e709e0eb18bb8558362ac5",
                                 "profile_name": "vllm-bf16-tp1-pp1", "profile_tags": {"llm_engine": "vllm"}}}
    fields = {f["detail"]["field"] for f in drift(outcome.record, log_observation)}
    assert fields == {"profile_id", "profile_name"}


def test_unknown_deployment_for_unregistered_telemetry(fleet):
    at = "2026-03-01T12:00:00Z"
    assert unknown_deployment(Identity(service_name="llama-3-1-8b"), fleet, at) is None
    rogue = Identity(namespace="shadow-it", workload="llama-uncensored", model="meta/llama-3.1-8b-instruct")
    finding = unknown_deployment(rogue, fleet, at)
    assert finding["kind"] == "unknown_deployment" and finding["subject_ids"] == ["k8s:shadow-it/llama-uncensored"]
    assert finding["detail"]["identity"]["workload"] == "llama-uncensored"
    again = unknown_deployment(rogue, fleet, "2026-03-01T13:00:00Z")
    assert again["finding_id"] == finding["finding_id"]
    assert unknown_deployment(Identity(), fleet, at) is None  # says nothing: nothing to attribute
    # Before the first version, the deployment was not registered yet.
    early = unknown_deployment(Identity(service_name="llama-3-1-8b"), fleet, "2026-03-01T08:00:00Z")
    assert early is not None


def test_check_observation_routes_to_drift_or_unknown(fleet):
    assert check_observation(fleet, observation(version={"release": "1.3.3"})) == []
    (finding,) = check_observation(fleet, {**observation(), "deployment": "prod/never-registered"})
    assert finding["kind"] == "unknown_deployment"
    assert finding["subject_ids"] == ["deployment:prod/never-registered"]


def test_an_image_change_drops_what_was_observed_of_the_old_container(tmp_path):
    _, topic = register([], "llama-values.yaml", "llama-governance.yaml", "metadata.json",
                        "startup-trtllm.log")
    # Same image again: the observations still hold, and keep their credit.
    (same,), _ = register(topic, "llama-values.yaml", deployment=LLAMA, now="2026-03-02T00:00:00Z")
    assert not same.changed
    # A new image: release, selected profile id, GPU device and model source were facts about
    # the old container; carrying them would make the new one "drift" from them.
    (outcome,), topic = register(topic, upgraded_values(tmp_path), deployment=LLAMA,
                                 now="2026-03-03T00:00:00Z")
    assert [c["field"] for c in outcome.changes] == [
        "nim_image", "nim_release", "model_source", "profile_id", "gpu_device"]
    assert outcome.record["nim_release"] is None and outcome.record["profile_id"] is None
    # Fields the new declaration states keep their values; the log no longer vouches for them.
    assert outcome.record["engine_backend"] == "tensorrt_llm"
    assert outcome.record["field_sources"]["engine_backend"] == "helm:llama-values.yaml"
    assert outcome.record["purpose"] == outcome.previous["purpose"]
