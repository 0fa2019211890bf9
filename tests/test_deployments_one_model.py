"""One deployment model: the version the processor assigns to a call is the one the
registry the CLI reads (`Registry(topic.read_all(config))`) gives for that identity at that
time, whatever the registrations and whenever they arrive; and what a running NIM reports
is checked against that same registry."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings, strategies as st

from nimtrail import raw, records
from nimtrail.config import ProcessorConfig
from nimtrail.deployments import Identity, Registry, check_observation
from processors import evidence as ev
from processors.evidence import Evidence
from processors.join import Joiner
from processors.pipeline import Pipeline
from tests import scenarios as sc
from tests.trail import Trail

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
NAMES = ("a", "b", "c")
MODELS = ("m1", "m2")


def at(minutes: int) -> str:
    return records.iso_from_ns(int((T0 + dt.timedelta(minutes=minutes)).timestamp() * 1e9))


@st.composite
def registrations(draw: st.DrawFn) -> list[dict]:
    """Versions of up to three deployments, each declaring a random subset of identities."""
    out = []
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True)):
        starts = sorted(draw(st.lists(st.integers(0, 120), min_size=1, max_size=3, unique=True)))
        for version, start in enumerate(starts, 1):
            identities = {
                "k8s": draw(st.lists(st.sampled_from([f"prod/{n}" for n in NAMES]), max_size=1)),
                "pod_prefixes": draw(st.lists(st.sampled_from(["prod/", "prod/a-", "prod/a-b-"]), max_size=1)),
                "service_names": draw(st.lists(st.sampled_from([f"svc-{n}" for n in NAMES]), max_size=1)),
                "host_ports": draw(st.lists(st.sampled_from(["a.svc:8000", "B.svc:8000"]), max_size=2, unique=True)),
                "model_names": draw(st.lists(st.sampled_from(MODELS), max_size=1)),
            }
            out.append(records.new("deployment", deployment_id=f"prod/{name}", version=version,
                                   valid_from=at(start), identities=identities))
    return out


def identity_keys() -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([
        "dep:prod/a", "dep:prod/x", "k8s:prod/a", "k8s:prod/b", "k8s:shadow/a", "pod:prod/a-b-0",
        "pod:prod/a-0", "pod:other/a-0", "svc:svc-a", "svc:svc-c", "hp:a.svc:8000", "hp:b.svc:8000",
        "model:m1", "model:m2"]), max_size=4, unique=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registrations(), st.lists(st.tuples(identity_keys(), st.integers(-10, 150)), min_size=1, max_size=8),
       st.integers(0, 100))
def test_the_processor_assigns_the_version_the_registry_gives(versions, calls, split):
    """Some versions arrive before the calls, the rest after (re-joining what they may
    match); the highest version of every call then names the deployment version a fresh
    registry of every version matches for the call's identity at its start."""
    joiner = Joiner(ProcessorConfig())
    kept = Trail()
    cut = split * len(versions) // 100
    for record in versions[:cut]:
        joiner.add_deployment(record)
    for i, (keys, minute) in enumerate(calls):
        joiner.add([Evidence(ev.MODEL_CALL, f"call-{i}", ev.LOG_NIM, f"line-{i}",
                             {"call_id": f"call-{i}", "started_at": at(minute), "identities": keys})], 0.0)
    for kind, record in joiner.flush():
        kept.add(kind, record)
    for record in versions[cut:]:
        joiner.add_deployment(record)
        for kind, found in joiner.flush():
            kept.add(kind, found)
    registry = Registry(versions)  # what the CLI builds from the topic
    for i, (keys, minute) in enumerate(calls):
        call = kept.of("model_call")[f"call-{i}"]
        assigned = (call["deployment_id"], call["deployment_version"])
        assert assigned == (registry.match(keys, at(minute)) or (None, None)), (keys, minute)


def test_identity_and_keys_ask_the_registry_one_question():
    fleet = Registry([sc.deployment("prod/llama-3-1-8b", 1, T0)])
    identity = Identity(namespace="prod", pod="llama-3-1-8b-5f7d-abcde", host_port="LLAMA.nim.svc:8000")
    assert identity.keys() == ["pod:prod/llama-3-1-8b-5f7d-abcde", "hp:llama.nim.svc:8000"]
    assert fleet.match(identity, at(5)) == fleet.match(identity.keys(), at(5)) == ("prod/llama-3-1-8b", 1)
    # A named deployment that is not registered matches nothing, whatever else matches.
    assert fleet.match(["dep:prod/other", "hp:llama.nim.svc:8000"], at(5)) is None
    assert fleet.match(identity, at(-5)) is None  # before its first version


def log_observation(profile: str, profile_id: str = "e" * 64, gpus: str = "0") -> dict:
    return {"schema": 1, "deployment": "prod/llama-3-1-8b", "source": "nim-log", "endpoint": "prod/llama-0",
            "observed_at": at(10),
            "facts": {"profile_id": profile_id, "profile_name": profile, "profile_tags": {},
                      "valid_profiles": {profile_id: {"name": profile, "gpus": [int(g) for g in gpus.split(",")]}}},
            "lines": {"profile_name": f"Selected profile: {profile_id} ({profile})",
                      f"valid_profiles.{profile_id}": f"Valid profile: {profile_id} ({profile}) on GPUs [{gpus}]"}}


def test_drift_names_field_values_and_source_line_and_repeats_are_one_finding():
    fleet = Registry([sc.deployment("prod/llama-3-1-8b", 1, T0)])  # vllm-bf16-tp1-pp1 on 1 GPU
    assert check_observation(fleet, log_observation("vllm-bf16-tp1-pp1")) == []
    found = {f["detail"]["field"]: f for f in check_observation(fleet, log_observation("vllm-fp16-tp2", gpus="0,1"))}
    assert set(found) == {"profile_name", "gpu_count"}
    profile = found["profile_name"]
    assert profile["kind"] == "deployment_drift" and profile["subject_ids"] == ["prod/llama-3-1-8b@1"]
    assert (profile["detail"]["reviewed"], profile["detail"]["observed"]) == ("vllm-bf16-tp1-pp1", "vllm-fp16-tp2")
    assert profile["detail"]["source_line"] == f"Selected profile: {'e' * 64} (vllm-fp16-tp2)"
    assert found["gpu_count"]["detail"]["source_line"].endswith("on GPUs [0,1]")
    again = check_observation(fleet, {**log_observation("vllm-fp16-tp2", gpus="0,1"), "observed_at": at(50)})
    assert {f["finding_id"] for f in again} == {f["finding_id"] for f in found.values()}
    other = check_observation(fleet, log_observation("vllm-fp8-tp1"))
    assert other[0]["finding_id"] != profile["finding_id"]  # a different difference: a new finding


def test_the_pipeline_raises_each_reported_finding_once_and_unknown_for_an_unregistered_nim():
    pipeline = Pipeline()
    pipeline.deployment(records.encode_batch("deployment", [sc.deployment("prod/llama-3-1-8b", 1, T0)]))
    pipeline.take()

    drifted = raw.encode({k: v for k, v in log_observation("vllm-fp16-tp1").items() if k != "schema"})
    for _ in range(3):
        pipeline.handle("observations", drifted, 0.0)
    stray = raw.encode({"deployment": "10.0.0.9:8000", "source": "nim-metadata", "endpoint": "http://10.0.0.9:8000",
                        "observed_at": at(10), "facts": {"metadata": {"selectedModelProfileId": "f" * 64}}})
    pipeline.handle("observations", stray, 0.0)
    findings = pipeline.take().records["finding"]
    assert [(f["kind"], f["subject_ids"]) for f in findings] == [
        ("deployment_drift", ["prod/llama-3-1-8b@1"]), ("unknown_deployment", ["host:10.0.0.9:8000"])]
    assert findings[1]["severity"] == "high" and findings[1]["detail"]["endpoint"] == "http://10.0.0.9:8000"
    pipeline.handle("observations", b"{not json", 0.0)
    assert [e.reason for _s, _v, e in pipeline.take().rejected] == ["malformed_observation"]


def test_a_nim_that_started_before_its_rollout_was_registered_is_judged_again():
    """A pod logs its startup before its rollout completes, and the rollout is registered
    after that: lines within the startup grace before a version takes effect are judged
    against it too, and what was raised before the registration arrived is produced again,
    resolved (a higher version of the same finding)."""
    pipeline = Pipeline()
    started = log_observation("vllm-bf16-tp1-pp1")  # logged at minute 10
    pipeline.handle("observations", raw.encode({k: v for k, v in started.items() if k != "schema"}), 0.0)
    first = pipeline.take().records["finding"]
    assert [f["kind"] for f in first] == ["unknown_deployment"]

    # The rollout took effect at minute 12 and was registered after the lines were judged.
    later = sc.deployment("prod/llama-3-1-8b", 1, T0 + dt.timedelta(minutes=12))
    pipeline.deployment(records.encode_batch("deployment", [later]))
    resolved = pipeline.take().records["finding"]
    assert [(f["finding_id"], f["version"], f["detail"]["status"]) for f in resolved] == [
        (first[0]["finding_id"], 2, "resolved")]
    assert check_observation(pipeline.joiner.registry, started) == []
    # Beyond the grace the same lines are a NIM no record covers.
    early = {**started, "observed_at": at(12 - 11)}
    assert [f["kind"] for f in check_observation(pipeline.joiner.registry, early)] == ["unknown_deployment"]
    # And a profile that neither the version in force nor the coming one states is drift.
    fleet = Registry([sc.deployment("prod/llama-3-1-8b", 1, T0), {**later, "version": 2}])
    assert check_observation(fleet, log_observation("vllm-bf16-tp1-pp1")) == []
    assert {f["detail"]["field"] for f in check_observation(fleet, log_observation("vllm-fp8-tp1"))} == {"profile_name"}
