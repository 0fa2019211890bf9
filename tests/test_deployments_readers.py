"""Readers of deployment descriptions: Helm values, manifests, NIMService, governance files,
NIM metadata, startup logs, profile names, and the secrets none of them may keep."""

from pathlib import Path

import orjson
import pytest

from nimtrail.deployments import (DeploymentFileError, group, normalize_gpu, parse_line,
                                  parse_profile_name, parse_startup_lines, read_file)
from nimtrail.deployments.redact import is_secret_name, looks_like_credential, marker

FIXTURES = Path(__file__).parent / "fixtures" / "deployments"
TRT_PROFILE_ID = "8af967d80ae8f30f4635a59b2140fdc2b38d3004e16e66c9667fa032e56497fd"
VLLM_PROFILE_ID = "3bb4e8fe78e5037b05dd618cebb1053347325ad6a1e709e0eb18bb8558362ac5"
SECRETS = ["nvapi-Qm9ndXNLZXlGb3JUZXN0c09ubHlfbm90LWEtcmVhbC1rZXktMDAx",   # values model.ngcAPIKey
           "nvapi-U2VjcmV0VmFsdWVGb3JUZXN0c09ubHktbm90LXJlYWwtOTk5OTk5",   # values env NGC_API_KEY
           "nvapi-VGVhbUFTZWNyZXRJblRoZU1hbmlmZXN0LW5vdC1yZWFsLTEyMzQ1Njc4",  # manifest Secret
           "s3cr3t-pa55"]                                                   # DATABASE_URL password


def one(path: Path):
    (fragment,) = read_file(path)
    return fragment


@pytest.mark.parametrize("name, expected", [
    ("vllm-bf16-tp1-pp1", dict(engine="vllm", precision="bf16", tp=1, pp=1, gpu=None, lora=False)),
    ("tensorrt_llm-h100-fp8-tp2-pp1-throughput",
     dict(engine="tensorrt_llm", precision="fp8", tp=2, pp=1, gpu="H100", lora=False, optimization="throughput")),
    ("sglang-fp8-tp4-pp1", dict(engine="sglang", precision="fp8", tp=4, pp=1, gpu=None, lora=False)),
    ("vllm-fp16-tp1", dict(engine="vllm", precision="fp16", tp=1, pp=None, gpu=None, lora=False)),
    ("vllm-bf16-tp1-pp1-lora", dict(engine="vllm", precision="bf16", tp=1, pp=1, lora=True)),
    ("tensorrt_llm-l40s-int4_awq-tp1-latency",
     dict(engine="tensorrt_llm", precision="int4_awq", tp=1, gpu="L40S", optimization="latency")),
    ("tensorrt_llm-h100_nvl-fp8-tp1-pp1-throughput-lora", dict(gpu="H100", lora=True, tp=1)),
])
def test_profile_names_say_engine_precision_parallelism_gpu_and_lora(name, expected):
    parsed = parse_profile_name(name)
    assert {k: parsed[k] for k in expected} == expected
    assert parsed["extra"] == []


def test_unknown_profile_tags_are_kept_not_rejected():
    parsed = parse_profile_name("vllm-bf16-tp1-pp1-experimental")
    assert parsed["engine"] == "vllm" and parsed["extra"] == ["experimental"]


@pytest.mark.parametrize("label, family", [
    ("NVIDIA-H100-80GB-HBM3", "H100"), ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA-A100-SXM4-80GB", "A100"), ("NVIDIA-L40S", "L40S"), ("Tesla-T4", "T4"),
    ("h100_nvl", "H100"), ("NVIDIA-RTX-6000-Ada", "RTX6000"), ("NVIDIA-GH200-480GB", "GH200")])
def test_gpu_names_from_labels_dcgm_and_profiles_agree(label, family):
    assert normalize_gpu(label) == family


def test_startup_log_of_a_vllm_profile_in_1x_jsonl_form():
    facts = parse_startup_lines((FIXTURES / "startup-vllm.log").read_text().splitlines())
    assert facts == {"profile_id": VLLM_PROFILE_ID, "profile_name": "vllm-bf16-tp1-pp1",
                     "profile_tags": {"feat_lora": "false", "llm_engine": "vllm", "precision": "bf16",
                                      "pp": "1", "tp": "1"},
                     "api_version": "1.0.0",
                     "valid_profiles": {VLLM_PROFILE_ID: {"name": "vllm-bf16-tp1-pp1", "gpus": [0]}},
                     "engine_version": "v0.4.1", "engine_config": facts["engine_config"]}
    assert facts["engine_config"]["tensor_parallel_size"] == "1"


def test_startup_log_of_a_tensorrt_llm_profile_in_cri_wrapped_text_form():
    fragment = one(FIXTURES / "startup-trtllm.log")
    assert fragment.source == "nim-log" and fragment.deployment_id is None
    assert fragment.fields == {
        "profile_id": TRT_PROFILE_ID, "profile_name": "tensorrt_llm-h100-fp8-tp2-pp1-throughput",
        "engine_backend": "tensorrt_llm", "precision": "fp8", "tensor_parallel": 2,
        "pipeline_parallel": 1, "gpu_type": "H100", "gpu_device": "2330:10de",
        "lora": {"enabled": False}, "gpu_count": 2}  # the selected profile's `on GPUs [0, 1]`


def test_startup_line_parser_handles_each_line_alone_and_the_last_start_wins():
    line = ('{"log":"INFO 07-23 22:27:24.930 ngc_injector.py:146] Profile metadata: tp: 4\\n",'
            '"stream":"stderr","time":"2026-01-01T00:00:00Z"}')
    assert parse_line(line) == ("profile_metadata", ("tp", "4"))
    assert parse_line("INFO 07-23 22:27:47 model_runner.py:173] Loading model weights took 14.9 GB") is None
    restarted = [f"Selected profile: {VLLM_PROFILE_ID} (vllm-bf16-tp1-pp1)", "Profile metadata: tp: 1",
                 f"Selected profile: {TRT_PROFILE_ID} (tensorrt_llm-h100-fp8-tp2-pp1-throughput)",
                 "Profile metadata: tp: 2"]
    facts = parse_startup_lines(restarted)
    assert facts["profile_id"] == TRT_PROFILE_ID and facts["profile_tags"] == {"tp": "2"}


def test_helm_values_with_profile_set_through_env():
    fragment = one(FIXTURES / "llama-values.yaml")
    f = fragment.fields
    assert fragment.source == "helm" and fragment.deployment_id is None
    assert f["nim_image"] == "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"
    assert f["model_id"] == "meta/llama-3.1-8b-instruct"
    assert (f["profile_name"], f["engine_backend"], f["precision"], f["tensor_parallel"],
            f["pipeline_parallel"], f["gpu_type"], f["gpu_count"]) == \
        ("tensorrt_llm-h100-fp8-tp2-pp1-throughput", "tensorrt_llm", "fp8", 2, 1, "H100", 2)
    assert f["tool_calling"] == {"enabled": True, "parser": "llama3_json"}
    assert f["logging_mode"] == {"jsonl": True, "level": "INFO"}
    assert f["health_endpoints"] == {"liveness": "/v1/health/live", "readiness": "/v1/health/ready",
                                     "startup": "/v1/health/ready"}
    assert f["metrics_endpoint"] == ":8000/v1/metrics"
    assert f["container_config"]["service_monitor"] is True
    assert f["tracing_config"]["OTEL_SERVICE_NAME"] == "llama-3-1-8b"
    assert f["env"]["NIM_PASSTHROUGH_ARGS"] == "--max-num-seqs 64 --enable-prefix-caching"
    assert f["env"]["NGC_API_KEY"] == marker(SECRETS[1])
    assert f["env"]["HF_TOKEN"] == "valueFrom secretKeyRef hf-token/HF_TOKEN"
    assert fragment.identities["service_names"] == ["llama-3-1-8b"]
    assert fragment.identities["model_names"] == ["meta/llama-3.1-8b-instruct"]


def test_nim_operator_nimservice_with_profile_in_nimcache():
    fragment = one(FIXTURES / "nimservice.yaml")
    f = fragment.fields
    assert fragment.deployment_id == "research/nemotron-nano-8b"
    assert f["profile_id"] == "4f9d4c1f0b1a3c2e8d7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d"
    assert f["nim_image"] == "nvcr.io/nim/nvidia/llama-3.1-nemotron-nano-8b-v1:1.8.4"
    assert f["model_id"] == "nvidia/llama-3.1-nemotron-nano-8b-v1"
    assert f["gpu_type"] == "L40S" and f["gpu_count"] == 1
    # The operator turns JSONL logging on; the manifest's env overrides only the level.
    assert f["logging_mode"] == {"jsonl": True, "level": "DEBUG"}
    assert f["deploy_path"]["operator"] == "nim-operator"
    assert fragment.identities["k8s"] == ["research/nemotron-nano-8b"]
    assert "nemotron-nano-8b.research.svc.cluster.local:8000" in fragment.identities["host_ports"]


def test_nimservice_profile_under_spec_storage_and_as_json(tmp_path):
    doc = {"apiVersion": "apps.nvidia.com/v1alpha1", "kind": "NIMService",
           "metadata": {"name": "llama", "namespace": "prod"},
           "spec": {"image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.8"},
                    "storage": {"nimCache": {"name": "llama-cache", "profile": "vllm-bf16-tp1-pp1"}}}}
    path = tmp_path / "nimservice.json"
    path.write_bytes(orjson.dumps(doc))
    fragment = one(path)
    assert fragment.fields["profile_name"] == "vllm-bf16-tp1-pp1"
    assert fragment.fields["engine_backend"] == "vllm"


def test_multi_document_manifest_registers_each_workload_with_its_service():
    deployment, statefulset = read_file(FIXTURES / "multi-manifests.yaml")
    assert deployment.deployment_id == "team-a/mistral-7b"
    assert deployment.fields["nim_image"] == "nvcr.io/nim/mistralai/mistral-7b-instruct-v0.3:1.2.2"
    assert deployment.fields["image_digest"].startswith("sha256:9c2f1e0d")
    assert deployment.fields["container_config"]["container"] == "nim"  # not the log shipper
    assert deployment.fields["engine_backend"] == "vllm" and deployment.fields["gpu_type"] == "A100"
    assert deployment.fields["env"]["NGC_API_KEY"] == "valueFrom secretKeyRef ngc-api/NGC_API_KEY"
    assert "mistral.team-a.svc.cluster.local:8000" in deployment.identities["host_ports"]
    assert deployment.identities["pod_prefixes"] == ["team-a/mistral-7b-"]
    assert statefulset.deployment_id == "team-a/qwen-72b"
    assert (statefulset.fields["engine_backend"], statefulset.fields["tensor_parallel"],
            statefulset.fields["gpu_count"]) == ("sglang", 4, 4)
    assert statefulset.identities["host_ports"] == []  # no Service selects it


def test_metadata_json_gives_profile_id_release_and_model_source():
    fragment = one(FIXTURES / "metadata.json")
    assert fragment.source == "nim-metadata"
    assert fragment.fields == {
        "profile_id": TRT_PROFILE_ID, "nim_release": "1.3.3",
        "model_source": "ngc://nim/meta/llama-3.1-8b-instruct:0.11.1+14957bf8-h100x2-fp8-throughput"}


def test_collector_observation_message_names_its_deployment(tmp_path):
    path = tmp_path / "observation.json"
    path.write_bytes(orjson.dumps({
        "schema": 1, "deployment": "prod/llama-3-1-8b", "source": "nim-metadata",
        "endpoint": "http://llama:8000", "observed_at": "2026-03-01T10:00:00Z",
        "facts": {"version": {"release": "1.3.3", "api": "1.0.0"},
                  "models": {"object": "list", "data": [
                      {"id": "meta/llama-3.1-8b-instruct", "object": "model"},
                      {"id": "support-lora", "parent": "meta/llama-3.1-8b-instruct"}]}}}))
    fragment = one(path)
    assert fragment.deployment_id == "prod/llama-3-1-8b"
    assert fragment.fields == {"nim_release": "1.3.3", "model_id": "meta/llama-3.1-8b-instruct"}
    assert fragment.identities["model_names"] == ["meta/llama-3.1-8b-instruct"]


def test_governance_file_is_sorted_and_names_its_deployment():
    fragment = one(FIXTURES / "llama-governance.yaml")
    assert fragment.source == "manual" and fragment.deployment_id == "prod/llama-3-1-8b"
    assert fragment.fields["destructive_tools"] == ["delete_ticket", "issue_refund"]
    assert fragment.fields["tool_calling_allowed"] is True
    assert fragment.identities["k8s"] == ["prod/llama-3-1-8b-nim-llm"]


@pytest.mark.parametrize("name, where, problem, expected", [
    ("bad-unquoted-tag.yaml", "line 3, key image.tag", "got a number", "a quoted image tag"),
    ("bad-syntax.yaml", "line 7, column 4", "not valid YAML", "a YAML or JSON document"),
    ("unknown-compose.yaml", "line 2", "unknown kind of file (top-level keys: services)",
     "a nim-llm Helm values file"),
    ("bad-governance.yaml", "line 4, key alowed_clients", "unknown key", "allowed_clients"),
])
def test_bad_files_are_named_with_the_line_or_key_and_what_was_expected(name, where, problem, expected):
    with pytest.raises(DeploymentFileError) as caught:
        read_file(FIXTURES / name)
    message = str(caught.value)
    assert message.startswith(str(FIXTURES / name) + ": ")
    assert where in message and problem in message
    assert "; expected " in message and expected in message.split("; expected ", 1)[1]
    assert caught.value.where.startswith(where)
    for secret in SECRETS:
        assert secret not in message


def test_manifest_errors_name_the_document_key(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n"
                    "  template:\n    spec:\n      containers:\n        - name: nim\n"
                    "          image: nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3\n"
                    "          env:\n            - value: \"1\"\n")
    with pytest.raises(DeploymentFileError) as caught:
        read_file(path)
    assert caught.value.where == "line 12, key spec.template.spec.containers[0].env[0].name"
    assert "expected the variable's name" in str(caught.value)


def test_inconsistent_profile_and_node_selector_is_refused(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text("image: {repository: nvcr.io/nim/meta/llama-3.1-8b-instruct, tag: '1.3.3'}\n"
                    "env:\n  - {name: NIM_MODEL_PROFILE, value: tensorrt_llm-h100-fp8-tp2-pp1-throughput}\n"
                    "nodeSelector:\n  nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB\n")
    with pytest.raises(DeploymentFileError, match=r'line 5, key nodeSelector\["nvidia.com/gpu.product"\]'):
        read_file(path)


def test_values_without_an_id_need_deployment_and_manifests_must_agree_with_it():
    with pytest.raises(DeploymentFileError, match="does not say which deployment.*--deployment ID"):
        group([FIXTURES / "llama-values.yaml"])
    groups = group([FIXTURES / "llama-values.yaml", FIXTURES / "llama-governance.yaml"])
    assert list(groups) == ["prod/llama-3-1-8b"] and len(groups["prod/llama-3-1-8b"]) == 2
    with pytest.raises(DeploymentFileError, match="names deployment research/nemotron-nano-8b but "
                                                  "--deployment is prod/other"):
        group([FIXTURES / "nimservice.yaml"], deployment="prod/other")
    with pytest.raises(DeploymentFileError, match="not a valid deployment id"):
        group([FIXTURES / "llama-values.yaml"], deployment="prod/llama@2")


def test_no_reader_keeps_a_secret():
    fragments = [f for p in ("llama-values.yaml", "multi-manifests.yaml", "nimservice.yaml")
                 for f in read_file(FIXTURES / p)]
    text = orjson.dumps([f.fields for f in fragments]).decode()
    for secret in SECRETS:
        assert secret not in text
    assert "postgres://[redacted sha256:" in text  # the URL stays readable, its password does not


@pytest.mark.parametrize("name, secret", [
    ("NGC_API_KEY", True), ("HF_TOKEN", True), ("ngcAPIKey", True), ("DB_PASSWORD", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("--api-key", True), ("client_secret", True),
    ("MAX_NUM_BATCHED_TOKENS", False), ("TOKENIZER_PATH", False), ("NIM_MODEL_PROFILE", False)])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


@pytest.mark.parametrize("value, credential", [
    ("nvapi-AbCdEfGhIjKlMnOpQrStUvWx0123", True),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl", True),
    ("Bearer abcdef0123456789", True),
    ("q8Zr2LkP0vXw7NbT4sYh1MdC9gFj", True),                      # high entropy, mixed classes
    (TRT_PROFILE_ID, False),                                      # hex ids are not secrets
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", False),
    ("/opt/nim/.cache/ngc/hub/models--nim--meta--llama-3.1-8b-instruct", False),
    ("http://nimtrail-collector.observability.svc:4318", False)])
def test_credential_shapes(value, credential):
    assert looks_like_credential(value) is credential


# ---- properties --------------------------------------------------------------------------

from hypothesis import assume, given, settings, strategies as st  # noqa: E402

from nimtrail import records  # noqa: E402
from nimtrail.deployments import build  # noqa: E402
from nimtrail.deployments.documents import load_documents  # noqa: E402
from nimtrail.deployments.helm import read_values  # noqa: E402

_SECRET_NAMES = st.sampled_from(["NGC_API_KEY", "HF_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD",
                                 "WANDB_API_KEY", "CLIENT_SECRET", "S3_SECRET_ACCESS_KEY"])
_VALUES = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=48)


def _record_with_secret(name: str, value: str) -> str:
    text = records.canonical_bytes({"image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct",
                                              "tag": "1.3.3"},
                                    "env": [{"name": name, "value": value},
                                            {"name": "NIM_PASSTHROUGH_ARGS", "value": f"--api-key {value}"}]})
    (doc,) = load_documents("values.json", text.decode())
    record = build("prod/x", [read_values(doc)], None, valid_from="2026-01-01T00:00:00Z",
                   observed_at="2026-01-01T00:00:00Z")
    return records.canonical_bytes(record).decode()


@settings(max_examples=60, deadline=None)
@given(name=_SECRET_NAMES, value=_VALUES)
def test_no_secret_named_value_survives_into_a_record(name, value):
    # A value that is part of every such record anyway (a field name, say) proves nothing.
    assume(value not in _record_with_secret(name, "~" * 12))
    stored = _record_with_secret(name, value)
    assert value not in stored and orjson.dumps(value).decode()[1:-1] not in stored


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_profile_name_parser_never_fails(name):
    parsed = parse_profile_name(name)
    assert set(parsed) == {"engine", "precision", "tp", "pp", "gpu", "lora", "optimization", "extra"}
