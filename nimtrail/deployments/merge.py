"""Merging fragments (and the previous version) into one deployment record.

Rules, in the order they apply:
1. Fragments of one registration must agree: two sources stating different values for the
   same field (or the same key of a mapping field, such as env.NIM_MODEL_PROFILE) is an
   error naming both, and nothing is registered.
2. What this registration states replaces the previous version's value.
3. What it does not state is carried over from the previous version, unless the source
   that stated it was re-supplied: a new values file or manifest replaces everything the
   previous declaration said (a variable removed from `env` is gone), a new governance
   file everything the previous review said, a new observation the previous observation.
   So `register values-v2.yaml` after `register values.yaml governance.yaml` keeps the
   review and changes only what the values changed.
   Observations describe the container that ran: when a new declaration changes the
   image, what was observed of the old image (release, selected profile id, GPU device,
   model source) is dropped rather than carried, or the new container would "drift" from
   facts about the old one.
4. `field_sources` names, for every field, the source(s) it came from
   ("helm:values.yaml", "helm:values.yaml + nim-log:startup.log"); for `identities`, each
   entry's source, as {kind: {entry: source}}.
5. Every string is scrubbed of credential-shaped values at the end, whatever its source.
"""

from __future__ import annotations

from typing import Any

from nimtrail import records
from nimtrail.deployments.fragment import (IDENTITY_KINDS, SOURCE_CLASS, SOURCES, Fragment,
                                           empty_identities)
from nimtrail.deployments.redact import preview, scrub
from nimtrail.errors import NimtrailError

MAPPING_FIELDS = {"container_config", "env", "api_surface", "health_endpoints", "logging_mode",
                  "tracing_config", "tool_calling", "deploy_path", "lora"}
# Fields every version carries but that do not make a new version when they change.
UNGOVERNED = {"deployment_id", "version", "valid_from", "source", "field_sources", "observed_at"}
GOVERNED_FIELDS = tuple(f for f in records.DEPLOYMENT_FIELDS if f not in UNGOVERNED)
CONTENT_FIELDS = tuple(f for f in GOVERNED_FIELDS if f != "identities")
SEPARATOR = " + "
OBSERVED_CLASSES = {"nim-metadata", "nim-log"}


class ConflictError(NimtrailError):
    """Two files given together say different things about the same field."""


def _class_of(label: str) -> str | None:
    return SOURCE_CLASS.get(label.split(":", 1)[0])


def _same(a: Any, b: Any) -> bool:
    return records.canonical_bytes(a) == records.canonical_bytes(b)


def _combine(deployment_id: str, fragments: list[Fragment]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    values: dict[str, Any] = {}
    labels: dict[str, list[str]] = {}
    stated_by: dict[tuple[str, str], str] = {}  # (field, key) -> label, for messages
    for fragment in fragments:
        for field, value in fragment.fields.items():
            if field not in values:
                values[field] = dict(value) if isinstance(value, dict) else value
                labels[field] = [fragment.label]
                if isinstance(value, dict):
                    stated_by.update({(field, k): fragment.label for k in value})
                continue
            current = values[field]
            if field in MAPPING_FIELDS and isinstance(current, dict) and isinstance(value, dict):
                for key, item in value.items():
                    if key in current and not _same(current[key], item):
                        raise _conflict(deployment_id, f"{field}.{key}", stated_by[(field, key)],
                                        current[key], fragment.label, item)
                    current.setdefault(key, item)
                    stated_by.setdefault((field, key), fragment.label)
            elif not _same(current, value):
                raise _conflict(deployment_id, field, labels[field][0], current, fragment.label, value)
            if fragment.label not in labels[field]:
                labels[field].append(fragment.label)
    return values, labels


def _conflict(deployment_id: str, field: str, label_a: str, a: Any, label_b: str, b: Any) -> ConflictError:
    return ConflictError(
        f"{deployment_id}: {field}: {label_a} says {preview(a, 80)} but {label_b} says "
        f"{preview(b, 80)}; expected the files given together to agree (register them one at "
        f"a time to record a change)")


def _identities(fragments: list[Fragment], previous: dict[str, Any] | None,
                resupplied: set[str]) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    sources: dict[str, dict[str, str]] = {kind: {} for kind in IDENTITY_KINDS}
    for fragment in fragments:
        for kind in IDENTITY_KINDS:
            for entry in fragment.identities.get(kind, []):
                sources[kind].setdefault(entry, fragment.label)
    if previous:
        before = (previous.get("field_sources") or {}).get("identities") or {}
        for kind in IDENTITY_KINDS:
            for entry, label in (before.get(kind) or {}).items():
                kept = [part for part in label.split(SEPARATOR) if _class_of(part) not in resupplied]
                if kept and entry not in sources[kind]:
                    sources[kind][entry] = SEPARATOR.join(kept)
    out = empty_identities()
    for kind in IDENTITY_KINDS:
        out[kind] = sorted(sources[kind])
        sources[kind] = dict(sorted(sources[kind].items()))
    return out, sources


def primary_source(field_sources: dict[str, Any]) -> str:
    """The record's `source`: the first of helm, k8s, nim-metadata, nim-log, manual that
    contributed a field."""
    used = set()
    for field, label in field_sources.items():
        if field != "identities" and isinstance(label, str):
            used.update(part.split(":", 1)[0] for part in label.split(SEPARATOR))
    return next((s for s in SOURCES if s in used), "manual")


def build(deployment_id: str, fragments: list[Fragment], previous: dict[str, Any] | None,
          *, valid_from: str, observed_at: str) -> dict[str, Any]:
    """The record this registration describes (its `version` is left None: the caller
    decides whether it is a new version at all)."""
    values, labels = _combine(deployment_id, fragments)
    resupplied = {f.source_class for f in fragments}
    if previous:
        if "nim_image" in values and not _same(values["nim_image"], previous.get("nim_image")):
            resupplied |= OBSERVED_CLASSES  # facts about the old image's container expire
        before = previous.get("field_sources") or {}
        for field in CONTENT_FIELDS:
            if previous.get(field) is None:
                continue
            label = before.get(field)
            kept = [p for p in label.split(SEPARATOR) if _class_of(p) not in resupplied] \
                if isinstance(label, str) else []
            if not kept:
                continue
            if field not in values:
                values[field], labels[field] = previous[field], kept
            elif _same(values[field], previous[field]):  # still stated by the earlier source too
                labels[field] += [p for p in kept if p not in labels[field]]
    identities, identity_sources = _identities(fragments, previous, resupplied)
    field_sources: dict[str, Any] = {f: SEPARATOR.join(labels[f]) for f in CONTENT_FIELDS if f in labels}
    field_sources["identities"] = identity_sources
    record = records.new(
        "deployment", deployment_id=deployment_id, version=None, valid_from=valid_from,
        source=primary_source(field_sources), identities=identities,
        field_sources=field_sources, observed_at=observed_at,
        **{f: values.get(f) for f in CONTENT_FIELDS})
    return scrub(record)
