"""What a running NIM says about itself → record fields.

Three shapes arrive: the collector's `nimtrail.raw.observations` messages (facts from
`/v1/metadata`, `/v1/version`, `/v1/models`, or parsed 1.x startup lines), the bare JSON a
user saved from one of those endpoints, and a startup log file. `observed_fields` is the
single translation from facts to fields; registration and drift detection both use it, so
what registration records is exactly what drift later compares against.
"""

from __future__ import annotations

from typing import Any

from nimtrail.deployments.documents import Document
from nimtrail.deployments.fragment import Fragment, identities
from nimtrail.deployments.helm import split_image
from nimtrail.deployments.profiles import (fields_from_profile_name, fields_from_profile_tags,
                                           is_profile_id)
from nimtrail.deployments.startup_log import parse_startup_lines


def served_models(models: Any) -> list[str]:
    """Base model ids from a `/v1/models` answer (LoRA adapters, which name a parent, skipped)."""
    data = models.get("data") if isinstance(models, dict) else models
    if not isinstance(data, list):
        return []
    out = []
    for entry in data:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            parent = entry.get("parent")
            if not parent or parent == entry["id"]:
                out.append(entry["id"])
    return out


def observed_fields(facts: dict[str, Any]) -> dict[str, Any]:
    """Record fields stated by an observation's facts (None-free)."""
    fields: dict[str, Any] = {}
    metadata = facts.get("metadata") if isinstance(facts.get("metadata"), dict) else {}
    version = facts.get("version") if isinstance(facts.get("version"), dict) else {}

    profile_id = facts.get("profile_id") or metadata.get("selectedModelProfileId")
    if is_profile_id(profile_id):
        fields["profile_id"] = profile_id.strip().lower()
    if isinstance(facts.get("profile_name"), str) and facts["profile_name"]:
        fields.update(fields_from_profile_name(facts["profile_name"]))
    if isinstance(facts.get("profile_tags"), dict):
        fields.update(fields_from_profile_tags(facts["profile_tags"]))  # tags are authoritative
    # `Valid profile: <id> (<name>) on GPUs [0, 1]` of the selected profile: the GPUs it runs on.
    valid = facts.get("valid_profiles")
    selected = valid.get(fields.get("profile_id")) if isinstance(valid, dict) else None
    if isinstance(selected, dict) and isinstance(selected.get("gpus"), list) and selected["gpus"]:
        fields["gpu_count"] = len(selected["gpus"])

    release = version.get("release") or metadata.get("version")
    if isinstance(release, str) and release:
        fields["nim_release"] = release
    info = metadata.get("modelInfo")
    info = info[0] if isinstance(info, list) and info else info
    if isinstance(info, dict) and isinstance(info.get("modelUrl"), str):
        fields["model_source"] = info["modelUrl"]
    models = served_models(facts.get("models"))
    if models:
        fields["model_id"] = models[0]
    if isinstance(facts.get("image"), str) and facts["image"]:
        image, digest = split_image(facts["image"], None)
        fields["nim_image"] = image
        if digest:
            fields["image_digest"] = digest
    return fields


def observed_identities(facts: dict[str, Any]) -> dict[str, list[str]]:
    return identities(model_names=served_models(facts.get("models")))


def _fragment(source: str, origin: str, deployment: str | None, facts: dict[str, Any],
              describes: str) -> Fragment:
    return Fragment(source=source, origin=origin, deployment_id=deployment,
                    fields=observed_fields(facts), identities=observed_identities(facts),
                    describes=describes)


# ---- the file shapes -------------------------------------------------------------------


def looks_like_observation(value: Any) -> bool:
    return isinstance(value, dict) and "facts" in value and "schema" in value


def looks_like_endpoint_json(value: Any) -> str | None:
    """Which NIM endpoint a saved JSON answer came from ("metadata", "version", "models")."""
    if not isinstance(value, dict):
        return None
    if "selectedModelProfileId" in value or "modelInfo" in value:
        return "metadata"
    if "release" in value and set(value) <= {"release", "api"}:
        return "version"
    if value.get("object") == "list" and isinstance(value.get("data"), list):
        return "models"
    return None


def read_observation(doc: Document) -> Fragment:
    """A `nimtrail.raw.observations` message saved to a file."""
    if doc.get(("schema",)) != 1:
        raise doc.fail(("schema",), "unsupported observation schema", "schema: 1")
    source = doc.text(("source",), required=True, expected="nim-metadata or nim-log")
    if source not in {"nim-metadata", "nim-log"}:
        raise doc.fail(("source",), "unknown observation source", "nim-metadata or nim-log")
    deployment = doc.text(("deployment",), expected="the deployment id")
    facts = doc.mapping(("facts",), required=True)
    fragment = _fragment(source, doc.origin, deployment, facts, f"{source} observation")
    if not fragment.fields:
        raise doc.fail(("facts",), "no fact nimtrail can record",
                       "metadata.selectedModelProfileId, version.release, models.data[], "
                       "profile_id/profile_name/profile_tags or image")
    return fragment


def read_endpoint_json(doc: Document, endpoint: str) -> Fragment:
    """JSON saved from /v1/metadata, /v1/version or /v1/models."""
    fragment = _fragment("nim-metadata", doc.origin, None, {endpoint: doc.value}, f"/v1/{endpoint}")
    if endpoint == "metadata" and doc.get(("selectedModelProfileId",)) is not None \
            and "profile_id" not in fragment.fields:
        raise doc.fail(("selectedModelProfileId",), "not a profile id", "64 hexadecimal characters")
    if not fragment.fields:
        raise doc.fail((), f"nothing nimtrail can record in this /v1/{endpoint} answer",
                       "selectedModelProfileId, modelInfo, release or data[].id")
    return fragment


def read_startup_log(file: str, origin: str, text: str) -> Fragment:
    from nimtrail.deployments.documents import DeploymentFileError

    facts = parse_startup_lines(text.splitlines())
    if facts is None:
        raise DeploymentFileError(file, "", "no `Selected profile:` line in this log",
                                  "NIM 1.x startup lines such as `Selected profile: <64 hex> (<name>)`")
    return _fragment("nim-log", origin, None, facts, "startup log")
