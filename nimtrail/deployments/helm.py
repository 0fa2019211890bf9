"""nim-llm Helm chart values (NVIDIA nim-deploy `helm/nim-llm`) → a deployment fragment.

Reads image.repository / image.tag, model.name / jsonLogging / logLevel / openaiPort,
env[], resources.limits["nvidia.com/gpu"], nodeSelector["nvidia.com/gpu.product"],
metrics.serviceMonitor, the probes, replicaCount, statefulSet, service and ingress.
Where the values file is silent, the chart's documented defaults apply for what the
container will do (JSONL logging on at INFO, port 8000, the /v1/health probes).

A values file does not name its release or namespace, so it names no deployment:
registration takes the id from --deployment (or a governance file).
"""

from __future__ import annotations

from typing import Any

from nimtrail.deployments.documents import Document
from nimtrail.deployments.envvars import container_env, env_fields, service_names, stored_env
from nimtrail.deployments.fragment import Fragment, clean, host_ports, identities
from nimtrail.deployments.profiles import normalize_gpu
from nimtrail.deployments.redact import redact_args

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CHART_DEFAULTS = {"jsonLogging": True, "logLevel": "INFO", "openaiPort": 8000,
                  "liveness": "/v1/health/live", "readiness": "/v1/health/ready",
                  "startup": "/v1/health/ready"}


def looks_like_values(value: Any) -> bool:
    return isinstance(value, dict) and ("image" in value or "model" in value) \
        and "apiVersion" not in value and "kind" not in value


def split_image(repository: str, tag: str | None) -> tuple[str, str | None]:
    """`repo[:tag][@sha256:...]` → (image without digest, digest or None)."""
    image = repository.strip()
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    if tag:
        tag = tag.strip()
        if "@" in tag:
            tag, digest = tag.split("@", 1)
        if tag:
            image = f"{image}:{tag}"
    return image, digest


def read_values(doc: Document) -> Fragment:
    """The fragment a nim-llm values file describes."""
    doc.mapping(("image",), required=True)
    repository = doc.text(("image", "repository"), required=True,
                          expected="the NIM image repository, e.g. nvcr.io/nim/meta/llama-3.1-8b-instruct")
    tag = doc.text(("image", "tag"), expected="a quoted image tag, e.g. \"1.8.0\"")
    image, digest = split_image(repository, tag)

    doc.mapping(("model",))
    port = doc.integer(("model", "openaiPort"), expected="a port number") or CHART_DEFAULTS["openaiPort"]
    json_logging = doc.flag(("model", "jsonLogging"))
    log_level = doc.text(("model", "logLevel"), expected="TRACE, DEBUG, INFO, WARNING, ERROR or CRITICAL")

    env = container_env(doc, ("env",))
    from_env = env_fields(env)

    doc.mapping(("resources",))
    limits = doc.mapping(("resources", "limits"))
    gpu_count = doc.integer(("resources", "limits", GPU_RESOURCE), expected="a number of GPUs")
    node_selector = {str(k): str(v) for k, v in doc.mapping(("nodeSelector",)).items()}
    gpu_type = normalize_gpu(node_selector.get(GPU_PRODUCT_LABEL))

    doc.mapping(("metrics",))
    service_monitor = doc.flag(("metrics", "serviceMonitor", "enabled"))
    health = {}
    for probe, key in (("livenessProbe", "liveness"), ("readinessProbe", "readiness"),
                       ("startupProbe", "startup")):
        doc.mapping((probe,))
        if doc.flag((probe, "enabled")) is False:
            continue
        health[key] = doc.text((probe, "path"), expected="an HTTP path") or CHART_DEFAULTS[key]

    doc.mapping(("service",))
    service_port = doc.integer(("service", "openaiPort"), expected="a port number") or port
    service_name = doc.text(("service", "name"))
    ingress_hosts = []
    if doc.flag(("ingress", "enabled")):
        for i, _host in enumerate(doc.sequence(("ingress", "hosts"))):
            host = doc.text(("ingress", "hosts", i, "host"))
            if host:
                ingress_hosts.append(host)

    container_config = clean({
        "replicas": doc.integer(("replicaCount",)),
        "resources": {str(k): str(v) for k, v in limits.items()} or None,
        "node_selector": node_selector or None,
        "image_pull_policy": doc.text(("image", "pullPolicy")),
        "stateful_set": doc.flag(("statefulSet", "enabled")),
        "multi_node": doc.flag(("multiNode", "enabled")),
        "command": redact_args(doc.strings(("customCommand",))) or None,
        "args": redact_args(doc.strings(("customArgs",))) or None,
        "service_monitor": service_monitor,
        "ngc_api_secret": doc.text(("model", "ngcAPISecret")),
        "nim_cache": doc.text(("model", "nimCache")),
    })
    logging_mode = {"jsonl": CHART_DEFAULTS["jsonLogging"] if json_logging is None else json_logging,
                    "level": (log_level or CHART_DEFAULTS["logLevel"]).upper()}
    logging_mode.update(from_env.pop("logging_mode", {}))  # an explicit env entry wins

    fields = {
        "nim_image": image,
        "image_digest": digest,
        "model_id": doc.text(("model", "name")),
        "gpu_count": gpu_count,
        "gpu_type": gpu_type,
        "container_config": container_config,
        "env": stored_env(env),
        "api_surface": clean({"protocol": "openai", "port": port, "service_port": service_port,
                              "service_type": doc.text(("service", "type")),
                              "ingress_hosts": ingress_hosts or None}),
        "health_endpoints": health,
        "logging_mode": logging_mode,
        "metrics_endpoint": f":{port}/v1/metrics",
        "deploy_path": {"helm_chart": "nim-llm"},
    }
    # The profile's GPU says what the engine was built for, the node selector where it runs:
    # a TensorRT-LLM engine built for one GPU does not start on another.
    if gpu_type and from_env.get("gpu_type", gpu_type) != gpu_type:
        raise doc.fail(("nodeSelector", GPU_PRODUCT_LABEL),
                       f"places the deployment on {gpu_type} but NIM_MODEL_PROFILE is built for "
                       f"{from_env['gpu_type']}", "a node selector that matches the profile's GPU")
    fields.update(from_env)
    fields = clean(fields)
    model_names = [fields["model_id"]] if fields.get("model_id") else []
    return Fragment(
        source="helm", origin=doc.origin, deployment_id=None, fields=fields,
        identities=identities(model_names=model_names, service_names=service_names(env),
                              host_ports=host_ports(service_name or "", None, service_port)),
        describes="nim-llm values")
