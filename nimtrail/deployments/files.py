"""Reading the files given to `nimtrail deployments register`: which kind each is, and
which deployment each fragment belongs to.

Kinds, told apart by content (the extension only decides between log text and YAML/JSON):
Kubernetes manifests (apiVersion + kind), a saved `nimtrail.raw.observations` message
(schema + facts), JSON saved from NIM's /v1/metadata, /v1/version or /v1/models, a
governance file (purpose, reviewed_by, ...), nim-llm Helm values (image / model), and NIM
1.x startup logs (`Selected profile:` lines).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from nimtrail.deployments import governance, helm, k8s, observations
from nimtrail.deployments.documents import (DeploymentFileError, load_documents, load_json,
                                            read_text)
from nimtrail.deployments.fragment import Fragment

LOG_SUFFIXES = {".log", ".txt", ".jsonl", ".out"}
KINDS = ("a nim-llm Helm values file (image.repository, model.name, env, ...)",
         "Kubernetes manifests (Deployment, StatefulSet or NIMService, with apiVersion and kind)",
         "a governance file (purpose, reviewed_by, allowed_clients, ...)",
         "JSON saved from a NIM's /v1/metadata, /v1/version or /v1/models",
         "a nimtrail.raw.observations message",
         "NIM 1.x startup log lines (`Selected profile: <64 hex> (<name>)`)")
EXPECTED = "one of: " + "; ".join(KINDS)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$")


def check_id(deployment_id: str, where: str = "--deployment") -> str:
    """A deployment id: letters, digits and . _ : / - ("prod/llama-3-1-8b"); never "@", which
    separates id and version in the deployments topic's keys."""
    if not _ID.match(deployment_id or "") or len(deployment_id) > 200:
        raise DeploymentFileError(where, "", f"{deployment_id!r} is not a valid deployment id",
                                  "letters, digits and . _ : / - (e.g. prod/llama-3-1-8b), no spaces or @")
    return deployment_id


def read_file(path: str | Path) -> list[Fragment]:
    """The fragments one file describes; DeploymentFileError names the file, the line or key,
    and what was expected."""
    name = str(path)
    text = read_text(path)
    origin = Path(name).name
    if not text.strip():
        raise DeploymentFileError(name, "", "the file is empty", EXPECTED)
    if Path(name).suffix.lower() in LOG_SUFFIXES:
        return [observations.read_startup_log(name, origin, text)]
    try:
        docs = load_documents(name, text)
    except DeploymentFileError:
        if "Selected profile:" in text:
            return [observations.read_startup_log(name, origin, text)]
        if Path(name).suffix.lower() == ".json":
            docs = load_json(name, text)
        else:
            raise
    docs = [d for d in docs if d.value is not None]
    if not docs:
        raise DeploymentFileError(name, "", "the file holds no document", EXPECTED)
    if any(k8s.looks_like_manifest(d.value) for d in docs):
        return k8s.read_manifests(docs)
    if len(docs) > 1:
        raise docs[1].fail((), "several documents, and they are not Kubernetes manifests",
                           "a single document, or manifests with apiVersion and kind")
    doc = docs[0]
    value = doc.value
    if not isinstance(value, dict):
        if "Selected profile:" in text:
            return [observations.read_startup_log(name, origin, text)]
        raise doc.fail((), f"the document is {type(value).__name__}, not a mapping", EXPECTED)
    if observations.looks_like_observation(value):
        return [observations.read_observation(doc)]
    endpoint = observations.looks_like_endpoint_json(value)
    if endpoint:
        return [observations.read_endpoint_json(doc, endpoint)]
    if governance.looks_like_governance(value):
        return [governance.read_governance(doc)]
    if helm.looks_like_values(value):
        return [helm.read_values(doc)]
    keys = ", ".join(sorted(map(str, value))[:8])
    raise doc.fail((), f"unknown kind of file (top-level keys: {keys})", EXPECTED)


def group(paths: Iterable[str | Path], deployment: str | None = None) -> dict[str, list[Fragment]]:
    """Read every file and assign each fragment to its deployment.

    A fragment that names its deployment (a manifest's namespace/name, a governance file's
    `deployment`, an observation's `deployment`) goes there; `deployment` (--deployment)
    must then agree. A fragment that names none (Helm values, saved endpoint JSON, logs)
    goes to `deployment`, or to the one deployment the other files name. All files are read
    before anything is decided, so one bad file fails the whole registration.
    """
    if deployment is not None:
        check_id(deployment)
    read: list[tuple[str, Fragment]] = []
    for path in paths:
        for fragment in read_file(path):
            read.append((str(path), fragment))
    named = {f.deployment_id for _, f in read if f.deployment_id}
    for path, fragment in read:
        if fragment.deployment_id:
            check_id(fragment.deployment_id, path)
            if deployment and fragment.deployment_id != deployment:
                raise DeploymentFileError(
                    path, "", f"{fragment.describes} names deployment {fragment.deployment_id} "
                              f"but --deployment is {deployment}",
                    "--deployment to match the file, or no --deployment")
    groups: dict[str, list[Fragment]] = {}
    for path, fragment in read:
        target = fragment.deployment_id or deployment
        if target is None:
            if len(named) == 1:
                target = next(iter(named))
            else:
                found = f" (the other files name {', '.join(sorted(named))})" if named else ""
                raise DeploymentFileError(
                    path, "", f"{fragment.describes} does not say which deployment it describes{found}",
                    "--deployment ID (e.g. --deployment prod/llama-3-1-8b)")
        groups.setdefault(target, []).append(fragment)
    return groups
