"""What the simulated fleet says about itself on paper: nim-llm Helm values per revision,
a governance file per deployment, and the ground-truth facts a test can compare the
pipeline's deployment records with.

Layout under the output directory (docs/simulator.md):
    deployments/<namespace>/<name>/values-r<N>.yaml   Helm values of revision N
    deployments/<namespace>/<name>/metadata-r<N>.json its pod's /v1/metadata
    deployments/<namespace>/<name>/governance.yaml    what it may be used for
    deployments/<namespace>/<name>/facts.json         every revision's facts (ground truth)
    deployments/<namespace>/<name>/rollouts.json      when each revision went live in this run
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from simulator import ids
from simulator.scenario import GPUS, DeploymentSpec, Release, Scenario

POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names
API_PORT = 8000


def pod_name(seed: int, spec: DeploymentSpec, revision: int) -> str:
    """<deployment>-<replicaset hash>-<pod suffix>: a new ReplicaSet hash per revision."""
    r = ids.rng(seed, f"pod:{spec.id}:{revision}")
    rs = "".join(r.choice(POD_ALPHABET) for _ in range(10))
    suffix = "".join(r.choice(POD_ALPHABET) for _ in range(5))
    return f"{spec.name}-{rs}-{suffix}"


def metrics_prefix(spec: DeploymentSpec, release: Release) -> str:
    if spec.metrics_prefix != "auto":
        return spec.metrics_prefix
    return "" if release.major < 2 else "vllm:"


def profile_tags(spec: DeploymentSpec, release: Release) -> dict[str, str]:
    """The tags NIM 1.x prints as `Profile metadata: <key>: <value>`."""
    tags = {"feat_lora": str(release.lora).lower(), "llm_engine": release.engine,
            "pp": str(release.pipeline_parallel), "precision": release.precision,
            "tp": str(release.tensor_parallel)}
    if release.engine == "tensorrt_llm":
        tags.update({"gpu": spec.gpu, "gpu_device": GPUS[spec.gpu].device,
                     "profile": release.optimization})
    return dict(sorted(tags.items()))


def revisions(spec: DeploymentSpec) -> list[tuple[float, Release]]:
    """(seconds after start, release) of every revision, in order."""
    return [(0.0, spec.release)] + [(float(u.at), u.release) for u in spec.upgrades]


def facts(scenario: Scenario, spec: DeploymentSpec, revision: int, seed: int,
          port: int | None = None, dcgm_port: int | None = None) -> dict[str, Any]:
    """Everything true about one revision of one deployment, named as the canonical
    deployment record names it (DESIGN.md), plus the simulator's own addresses."""
    at, release = revisions(spec)[revision - 1]
    gpu = GPUS[spec.gpu]
    profile_name = release.profile_name(spec.gpu)
    profile = ids.profile_id(spec.model, profile_name)
    image = f"{release.image}:{release.tag}"
    gov = spec.governance
    base = f"http://127.0.0.1:{port}" if port else None
    host_ports = [f"{spec.name}.{spec.namespace}.svc.cluster.local:{API_PORT}"]
    if port:
        host_ports.append(f"127.0.0.1:{port}")
    return {
        "deployment_id": spec.id,
        "revision": revision,
        "active_from_s": at,
        "source": "helm",
        "nim_image": image,
        "image_digest": "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
        "nim_release": release.nim_release,
        "model_id": spec.model,
        "engine_backend": release.engine,
        "profile_id": profile,
        "profile_name": profile_name,
        "precision": release.precision,
        "tensor_parallel": release.tensor_parallel,
        "pipeline_parallel": release.pipeline_parallel,
        "lora": release.lora,
        "gpu_type": spec.gpu,
        "gpu_product": gpu.product,
        "gpu_device": gpu.device,
        "gpu_count": release.tensor_parallel * release.pipeline_parallel,
        "logging_mode": "jsonl",
        "log_shape": "1.x" if release.major < 2 else "2.x",
        "metrics_prefix": metrics_prefix(spec, release),
        "tool_calling": {"enabled": bool(spec.tool_call_parser), "parser": spec.tool_call_parser or None},
        "deploy_path": {"namespace": spec.namespace, "release": spec.name,
                        "host": f"127.0.0.1:{port}" if port else None},
        "pod": pod_name(seed, spec, revision),
        "service_name": spec.name,
        "purpose": gov.purpose,
        "tool_calling_allowed": gov.tool_calling_allowed,
        "allowed_clients": list(gov.allowed_clients),
        "tool_servers": [next((f"mcp://{m.address}" for m in scenario.mcp_servers if m.name == name), name)
                         for name in gov.tool_servers],
        "destructive_tools": list(gov.destructive_tools),
        "reviewed_by": gov.reviewed_by,
        "update_channel": gov.update_channel,
        "identities": {
            "k8s": [spec.id],
            "pod_prefixes": [f"{spec.id}-"],
            "service_names": [spec.name],
            "host_ports": host_ports,
            "model_names": [spec.model],
        },
        "base_url": base,
        "metrics_url": f"{base}/v1/metrics" if base else None,
        "dcgm_url": f"http://127.0.0.1:{dcgm_port}/metrics" if dcgm_port else None,
    }


def deployment_facts(scenario: Scenario, seed: int | None = None,
                     ports: dict[str, tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Every revision of every deployment in the scenario (pure: nothing is started).
    `ports` maps a deployment id to its (API port, DCGM port) when known."""
    seed = scenario.seed if seed is None else seed
    out = []
    for spec in scenario.deployments:
        port, dcgm = (ports or {}).get(spec.id, (None, None))
        for revision in range(1, len(spec.upgrades) + 2):
            out.append(facts(scenario, spec, revision, seed, port, dcgm))
    return out


def helm_values(spec: DeploymentSpec, fact: dict[str, Any]) -> dict[str, Any]:
    """nim-llm chart values for one revision. Secrets appear only as references."""
    env = [
        # NIM accepts a profile's name or its id; the name says what it is (engine, GPU,
        # precision, parallelism), the id comes with the pod's /v1/metadata.
        {"name": "NIM_MODEL_PROFILE", "value": fact["profile_name"]},
        {"name": "NIM_JSONL_LOGGING", "value": "1"},
        {"name": "NIM_LOG_LEVEL", "value": "INFO"},
        {"name": "NIM_SERVED_MODEL_NAME", "value": spec.model},
        {"name": "NGC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ngc-api", "key": "NGC_API_KEY"}}},
    ]
    if spec.tool_call_parser:
        env += [{"name": "NIM_ENABLE_AUTO_TOOL_CHOICE", "value": "1"},
                {"name": "NIM_TOOL_CALL_PARSER", "value": spec.tool_call_parser}]
    if spec.tracing:
        env += [{"name": "NIM_ENABLE_OTEL", "value": "1"},
                {"name": "OTEL_SERVICE_NAME", "value": spec.name},
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "value": "http://nimtrail-collector.observability.svc:4318"}]
    image, _, tag = fact["nim_image"].rpartition(":")
    return {
        "image": {"repository": image, "tag": tag, "pullPolicy": "IfNotPresent"},
        "imagePullSecrets": [{"name": "ngc-secret"}],
        "model": {"name": spec.model, "ngcAPISecret": "ngc-api", "nimCache": "/model-store",
                  "openaiPort": API_PORT, "jsonLogging": True, "logLevel": "INFO"},
        "env": env,
        "resources": {"limits": {"nvidia.com/gpu": fact["gpu_count"]}},
        "nodeSelector": {"nvidia.com/gpu.product": fact["gpu_product"]},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": True}},
        "livenessProbe": {"enabled": True, "path": "/v1/health/live"},
        "readinessProbe": {"enabled": True, "path": "/v1/health/ready"},
        "persistence": {"enabled": True, "size": "200Gi"},
    }


def nim_metadata(spec: DeploymentSpec, fact: dict[str, Any]) -> dict[str, Any]:
    """What the pod's `GET /v1/metadata` answers."""
    tag = fact["nim_image"].rpartition(":")[2]
    return {
        "version": fact["nim_release"],
        "selectedModelProfileId": fact["profile_id"],
        "modelInfo": [{"shortName": f"{spec.model}:{tag}", "modelUrl": f"ngc://nim/{spec.model}:{tag}"}],
        "licenseInfo": {"name": "NVIDIA AI Foundation Models Community License", "path": "/opt/nim/LICENSE"},
        "assetInfo": [f"ngc://nim/{spec.model}:{fact['profile_name']}"],
        "repository_override": "",
    }


def governance(scenario: Scenario, spec: DeploymentSpec) -> dict[str, Any]:
    """The governance file: what the deployment may be used for, and how telemetry names it.
    MCP servers are written as `mcp://<host:port>`, the address their clients dial."""
    gov = spec.governance
    servers = {m.name: f"mcp://{m.address}" for m in scenario.mcp_servers}
    return {"deployment": spec.id, "purpose": gov.purpose,
            "tool_calling_allowed": gov.tool_calling_allowed,
            "allowed_clients": list(gov.allowed_clients),
            "tool_servers": [servers.get(name, name) for name in gov.tool_servers],
            "destructive_tools": list(gov.destructive_tools), "reviewed_by": gov.reviewed_by,
            "update_channel": gov.update_channel,
            "identities": {"k8s": [spec.id], "pod_prefixes": [f"{spec.id}-"],
                           "service_names": [spec.name],
                           "host_ports": [f"{spec.name}.{spec.namespace}.svc.cluster.local:{API_PORT}"]}}


def directory(out_dir: Path, spec: DeploymentSpec) -> Path:
    return out_dir / "deployments" / spec.namespace / spec.name


def write_yaml(path: Path, doc: dict[str, Any], header: str = "") -> None:
    atomic_write(path, header + yaml.safe_dump(doc, sort_keys=False))


def atomic_write(path: Path, text: str) -> None:
    """Readers (the demo, a registration) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_revision(out_dir: Path, spec: DeploymentSpec, fact: dict[str, Any]) -> Path:
    """Write one revision's Helm values (when it is rolled out, as a GitOps repo would) and
    what its pod then answers on `/v1/metadata`, saved beside them."""
    d = directory(out_dir, spec)
    path = d / f"values-r{fact['revision']}.yaml"
    header = (f"# nim-llm values for Helm release {spec.name} in namespace {spec.namespace}, "
              f"revision {fact['revision']}\n"
              f"# helm upgrade --install {spec.name} nim-llm -n {spec.namespace} -f {path.name}\n")
    write_yaml(path, helm_values(spec, fact), header)
    atomic_write(d / f"metadata-r{fact['revision']}.json", json.dumps(nim_metadata(spec, fact), indent=2) + "\n")
    return path


def write_static(out_dir: Path, scenario: Scenario, spec: DeploymentSpec, all_facts: list[dict[str, Any]]) -> None:
    d = directory(out_dir, spec)
    write_yaml(d / "governance.yaml", governance(scenario, spec),
               f"# governance of {spec.id} (Helm release {spec.name} in namespace {spec.namespace})\n")
    atomic_write(d / "facts.json", json.dumps(all_facts, indent=2) + "\n")


def write_rollouts(out_dir: Path, spec: DeploymentSpec, rollouts: list[dict[str, Any]]) -> None:
    """When each revision went live in this run: a registration's `--valid-from`."""
    atomic_write(directory(out_dir, spec) / "rollouts.json", json.dumps(rollouts, indent=2) + "\n")
