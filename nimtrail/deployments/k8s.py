"""Kubernetes manifests → one deployment fragment per NIM workload.

Understands Deployment and StatefulSet (apps/v1), the NIM Operator's NIMService
(apps.nvidia.com), Services (whose selectors say which workload they front: their
addresses become the workload's host:port identities) and `kind: List` (what
`kubectl get -o yaml|json` prints). YAML or JSON, several documents per file. Other kinds
are skipped; a Secret is never read beyond its kind. Every workload in the file is
registered, each under its `<namespace>/<name>`.
"""

from __future__ import annotations

from typing import Any

from nimtrail.deployments.documents import Document, Path_
from nimtrail.deployments.envvars import container_env, env_fields, service_names, stored_env
from nimtrail.deployments.fragment import Fragment, clean, host_ports, identities
from nimtrail.deployments.helm import GPU_PRODUCT_LABEL, GPU_RESOURCE, split_image
from nimtrail.deployments.profiles import normalize_gpu, profile_fields
from nimtrail.deployments.redact import redact_args

WORKLOADS = {"Deployment", "StatefulSet"}
OPERATOR_DEFAULTS = {"port": 8000, "liveness": "/v1/health/live", "readiness": "/v1/health/ready",
                     "startup": "/v1/health/ready"}


def looks_like_manifest(value: Any) -> bool:
    return isinstance(value, dict) and "apiVersion" in value and "kind" in value


def _manifests(docs: list[Document]) -> list[tuple[Document, Path_]]:
    out = []
    for doc in docs:
        if doc.value is None:
            continue
        if not looks_like_manifest(doc.value):
            raise doc.fail((), "not a Kubernetes object (no apiVersion and kind)",
                           "every document of a manifest file to have apiVersion and kind")
        if doc.value["kind"] == "List" or str(doc.value["kind"]).endswith("List"):
            for i, item in enumerate(doc.sequence(("items",))):
                if not looks_like_manifest(item):
                    raise doc.fail(("items", i), "not a Kubernetes object",
                                   "apiVersion and kind on every item")
                out.append((doc, ("items", i)))
        else:
            out.append((doc, ()))
    return out


def read_manifests(docs: list[Document]) -> list[Fragment]:
    """One fragment per Deployment, StatefulSet or NIMService in the documents."""
    manifests = _manifests(docs)
    services = [(d, p) for d, p in manifests if d.get((*p, "kind")) == "Service"]
    fragments = []
    for doc, base in manifests:
        kind = doc.get((*base, "kind"))
        if kind in WORKLOADS:
            fragments.append(_workload(doc, base, kind, services))
        elif kind == "NIMService":
            fragments.append(_nimservice(doc, base))
    if not fragments:
        kinds = sorted({str(d.get((*p, "kind"))) for d, p in manifests})
        raise docs[0].fail((), f"no NIM workload in the manifests (found: {', '.join(kinds) or 'nothing'})",
                           "a Deployment, StatefulSet or NIMService")
    return fragments


def _name(doc: Document, base: Path_) -> tuple[str, str]:
    doc.mapping((*base, "metadata"), required=True)
    name = doc.text((*base, "metadata", "name"), required=True, expected="the object's name")
    namespace = doc.text((*base, "metadata", "namespace")) or "default"
    return namespace, name


def _pick_container(doc: Document, path: Path_) -> tuple[Path_, dict]:
    containers = doc.sequence(path, required=True)
    if not containers:
        raise doc.fail(path, "no containers", "at least one container running the NIM image")
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            raise doc.fail((*path, i), "a container is not a mapping", "a container spec")

    def score(c: dict) -> int:
        limits = (c.get("resources") or {}).get("limits") or {}
        return (2 if GPU_RESOURCE in limits else 0) + (1 if "/nim/" in str(c.get("image", "")) else 0)

    best = max(range(len(containers)), key=lambda i: (score(containers[i]), -i))
    return (*path, best), containers[best]


def _probe_paths(doc: Document, path: Path_, defaults: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for probe, key in (("livenessProbe", "liveness"), ("readinessProbe", "readiness"),
                       ("startupProbe", "startup")):
        spec = doc.mapping((*path, probe))
        if "probe" in spec:  # NIMService wraps the probe: {enabled, probe: {httpGet: ...}}
            if doc.flag((*path, probe, "enabled")) is False:
                continue
            value = doc.text((*path, probe, "probe", "httpGet", "path"))
        else:
            value = doc.text((*path, probe, "httpGet", "path"))
        if value or (defaults and key in defaults):
            out[key] = value or defaults[key]  # type: ignore[index]
    return out


def _selects(service: dict, namespace: str, labels: dict[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    service_ns = (service.get("metadata") or {}).get("namespace") or "default"
    return bool(selector) and service_ns == namespace and \
        all(str(labels.get(k)) == str(v) for k, v in selector.items())


def _service_addresses(services: list[tuple[Document, Path_]], namespace: str,
                       labels: dict[str, Any]) -> tuple[list[str], list[str]]:
    addresses, names = [], []
    for doc, base in services:
        service = doc.get(base)
        if not _selects(service, namespace, labels):
            continue
        svc_name = doc.text((*base, "metadata", "name"), required=True)
        names.append(svc_name)
        for i, _port in enumerate(doc.sequence((*base, "spec", "ports"))):
            addresses += host_ports(svc_name, namespace,
                                    doc.integer((*base, "spec", "ports", i, "port"), "a port number"))
    return addresses, names


def _workload(doc: Document, base: Path_, kind: str,
              services: list[tuple[Document, Path_]]) -> Fragment:
    namespace, name = _name(doc, base)
    pod = (*base, "spec", "template", "spec")
    doc.mapping((*base, "spec", "template"), required=True)
    doc.mapping(pod, required=True)
    cpath, container = _pick_container(doc, (*pod, "containers"))
    image, digest = split_image(doc.text((*cpath, "image"), required=True,
                                         expected="the container image"), None)
    env = container_env(doc, (*cpath, "env"))
    from_env = env_fields(env)
    limits = doc.mapping((*cpath, "resources", "limits"))
    node_selector = {str(k): str(v) for k, v in doc.mapping((*pod, "nodeSelector")).items()}
    port = None
    for i, p in enumerate(doc.sequence((*cpath, "ports"))):
        if port is None or str((p or {}).get("name", "")).lower() in {"http", "openai", "http-openai", "api"}:
            port = doc.integer((*cpath, "ports", i, "containerPort"), "a port number")
    port = port or OPERATOR_DEFAULTS["port"]
    labels = doc.mapping((*base, "spec", "template", "metadata", "labels"))
    addresses, service_objects = _service_addresses(services, namespace, labels)
    fields = {
        "nim_image": image,
        "image_digest": digest,
        "gpu_count": doc.integer((*cpath, "resources", "limits", GPU_RESOURCE), "a number of GPUs"),
        "gpu_type": normalize_gpu(node_selector.get(GPU_PRODUCT_LABEL)),
        "container_config": clean({
            "workload": kind,
            "container": container.get("name"),
            "replicas": doc.integer((*base, "spec", "replicas")),
            "resources": {str(k): str(v) for k, v in limits.items()} or None,
            "node_selector": node_selector or None,
            "image_pull_policy": doc.text((*cpath, "imagePullPolicy")),
            "command": redact_args(doc.strings((*cpath, "command"))) or None,
            "args": redact_args(doc.strings((*cpath, "args"))) or None,
            "env_from": [f"{k} {(ref.get(k) or {}).get('name')}" for ref in doc.sequence((*cpath, "envFrom"))
                         if isinstance(ref, dict) for k in ("configMapRef", "secretRef") if k in ref] or None,
        }),
        "env": stored_env(env),
        "api_surface": {"protocol": "openai", "port": port},
        "health_endpoints": _probe_paths(doc, cpath, None),
        "logging_mode": from_env.pop("logging_mode", None),
        "metrics_endpoint": f":{port}/v1/metrics",
        "deploy_path": clean({"namespace": namespace, "kind": kind, "name": name,
                              "services": sorted(service_objects) or None}),
    }
    return _fragment("k8s", doc, namespace, name, kind, fields, from_env, env, addresses)


def _nimservice(doc: Document, base: Path_) -> Fragment:
    namespace, name = _name(doc, base)
    spec = (*base, "spec")
    doc.mapping(spec, required=True)
    doc.mapping((*spec, "image"), required=True)
    image, digest = split_image(
        doc.text((*spec, "image", "repository"), required=True, expected="the NIM image repository"),
        doc.text((*spec, "image", "tag"), expected="a quoted image tag"))
    env = container_env(doc, (*spec, "env"))
    from_env = env_fields(env)
    # The profile lives in spec.storage.nimCache (v1alpha1 today) or spec.nimCache (early).
    profile_path = (*spec, "storage", "nimCache", "profile")
    if doc.get(profile_path) is None:
        profile_path = (*spec, "nimCache", "profile")
    profile = doc.text(profile_path, expected="a profile id (64 hex) or name")
    if profile:
        from_env.update(profile_fields(profile))
    limits = doc.mapping((*spec, "resources", "limits"))
    node_selector = {str(k): str(v) for k, v in doc.mapping((*spec, "nodeSelector")).items()}
    service = (*spec, "expose", "service")
    port = (doc.integer((*service, "port"), "a port number")
            or doc.integer((*service, "openaiPort"), "a port number") or OPERATOR_DEFAULTS["port"])
    service_name = doc.text((*service, "name")) or name
    # The operator sets NIM_JSONL_LOGGING=1 and NIM_LOG_LEVEL=INFO unless env overrides them.
    logging_mode = {"jsonl": True, "level": "INFO", **from_env.pop("logging_mode", {})}
    fields = {
        "nim_image": image,
        "image_digest": digest,
        "gpu_count": doc.integer((*spec, "resources", "limits", GPU_RESOURCE), "a number of GPUs"),
        "gpu_type": normalize_gpu(node_selector.get(GPU_PRODUCT_LABEL)),
        "container_config": clean({
            "workload": "NIMService",
            "replicas": doc.integer((*spec, "replicas")) or doc.integer((*spec, "scale", "minReplicas")),
            "resources": {str(k): str(v) for k, v in limits.items()} or None,
            "node_selector": node_selector or None,
            "image_pull_policy": doc.text((*spec, "image", "pullPolicy")),
            "auth_secret": doc.text((*spec, "authSecret")),
            "nim_cache": doc.text((*spec, "storage", "nimCache", "name")) or doc.text((*spec, "nimCache", "name")),
            "service_monitor": doc.flag((*spec, "metrics", "serviceMonitor", "enabled")) if
            isinstance(doc.get((*spec, "metrics", "serviceMonitor")), dict) else None,
        }),
        "env": stored_env(env),
        "api_surface": clean({"protocol": "openai", "port": port,
                              "service_type": doc.text((*service, "type"))}),
        "health_endpoints": _probe_paths(doc, spec, OPERATOR_DEFAULTS),
        "logging_mode": logging_mode,
        "metrics_endpoint": f":{port}/v1/metrics",
        "deploy_path": {"namespace": namespace, "kind": "NIMService", "name": name,
                        "operator": "nim-operator", "services": [service_name]},
    }
    return _fragment("k8s", doc, namespace, name, "NIMService", fields, from_env, env,
                     host_ports(service_name, namespace, port))


def _fragment(source: str, doc: Document, namespace: str, name: str, kind: str,
              fields: dict[str, Any], from_env: dict[str, Any], env: dict[str, str],
              addresses: list[str]) -> Fragment:
    gpu_type = fields.get("gpu_type")
    if gpu_type and from_env.get("gpu_type", gpu_type) != gpu_type:
        raise doc.fail((), f"{kind} {namespace}/{name} is placed on {gpu_type} but its profile is "
                           f"built for {from_env['gpu_type']}", "a node selector that matches the profile's GPU")
    fields.update(from_env)
    fields = clean(fields)
    return Fragment(
        source=source, origin=doc.origin, deployment_id=f"{namespace}/{name}", fields=fields,
        identities=identities(
            k8s=[f"{namespace}/{name}"], pod_prefixes=[f"{namespace}/{name}-"],
            service_names=service_names(env), host_ports=addresses,
            model_names=[fields["model_id"]] if fields.get("model_id") else []),
        describes=f"{kind} {namespace}/{name}")
