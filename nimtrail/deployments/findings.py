"""Governance findings, as canonical `finding` records (pure functions): the one recipe for
every kind, used by the processor's policy, its clock and its drift check alike.

- `finding_id` is a hash of the kind, the subject and what tells two findings about one
  subject apart: the same finding judged again — after a replay, a restart, or another
  observation of the same thing — has the same id, a no-op downstream.
- `deployment_drift`: a running container reports a profile, image, model, release or GPU
  count that differs from its reviewed record. One finding per (deployment version, field,
  observed value).
- `unknown_deployment`: telemetry that matches no deployment registered at its time. One
  finding per call (subject: the call), and one per NIM seen reporting about itself
  (subject: its identity).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Iterable
from urllib.parse import urlsplit

from nimtrail import records
from nimtrail.deployments.observations import observed_fields, served_models
from nimtrail.deployments.registry import Identity, Registry
from nimtrail.deployments.versions import iso, parse_time

SEVERITY = {
    "ungated_action": "critical",
    "purpose_violation": "high",
    "unauthorized_client": "high",
    "unlisted_tool_server": "high",
    # A NIM nobody reviewed serves traffic: no purpose, allowed clients or tool policy
    # applies to it, so every other check is silently off for its calls.
    "unknown_deployment": "high",
    "unattributed_action": "medium",
    "clock_skew": "low",  # processors/clock.py: a time replaced by the receive time
}
# What drift compares, and how much it matters when it differs.
DRIFT_SEVERITY = {"nim_image": "high", "image_digest": "high", "model_id": "high",
                  "profile_id": "medium", "profile_name": "medium", "nim_release": "medium",
                  "gpu_count": "medium"}
# Where each compared field is read from in a `/v1/...` answer (a log names its line).
_ENDPOINT_SOURCE = {"profile_id": "/v1/metadata selectedModelProfileId",
                    "nim_release": "/v1/version release (or /v1/metadata version)",
                    "model_id": "/v1/models data[].id", "nim_image": "image", "image_digest": "image"}


def finding_id(kind: str, subject: str, *distinguishing: Any) -> str:
    """Deterministic: the kind, the subject and what distinguishes findings about it."""
    return records.sha256_hex("|".join([kind, subject, *(str(p) for p in distinguishing)]))[:32]


def new_finding(kind: str, subject: str, subject_ids: list[str], detected_at: str | None,
                detail: dict[str, Any], *, distinguishing: tuple[Any, ...] = (),
                severity: str | None = None) -> dict[str, Any]:
    """An open finding (its `version` is set by whoever judges it)."""
    record = records.new("finding", finding_id=finding_id(kind, subject, *distinguishing),
                         severity=severity or SEVERITY[kind], subject_ids=subject_ids,
                         detected_at=detected_at, detail={"status": "open", **detail})
    record["kind"] = kind  # (records.new's own first parameter is called `kind`)
    return record


def unknown_deployment_finding(subject: str, subject_ids: list[str], detected_at: str | None,
                               detail: dict[str, Any]) -> dict[str, Any]:
    """The one unknown_deployment recipe: about a call (subject: the call id) or about a
    NIM's identity (subject: Identity.describe())."""
    return new_finding("unknown_deployment", subject, subject_ids, detected_at, detail)


def _observed(observation: dict[str, Any]) -> dict[str, Any]:
    facts = observation.get("facts") or {}
    fields = observed_fields(facts)
    models = served_models(facts.get("models"))
    if models:
        fields["model_id"] = models  # every served model counts: the reviewed one must be among them
    return fields


def source_of(observation: dict[str, Any], field: str) -> str | None:
    """What stated `field`: the log line for a startup log, the endpoint and key for a poll."""
    lines = observation.get("lines") or {}
    if field == "gpu_count":
        profile = (observation.get("facts") or {}).get("profile_id")
        return lines.get(f"valid_profiles.{profile}")
    if field in lines:
        return lines[field]
    if observation.get("source") == "nim-log":
        return None
    where = _ENDPOINT_SOURCE.get(field)
    return f"{observation.get('endpoint') or ''} {where}".strip() if where else None


def drift(record: dict[str, Any], observation: dict[str, Any], *,
          now: str | None = None) -> list[dict[str, Any]]:
    """Findings (version 1) for every reviewed field the observation contradicts.

    `record` is the deployment version valid when the observation was made (see
    `Registry.as_of`); `observation` a `nimtrail.raw.observations` message (decoded).
    Only fields both sides state are compared: a record that leaves the profile to NIM's
    automatic selection does not drift when NIM selects one.
    """
    observed = _observed(observation)
    at = iso(observation.get("observed_at") or now or records.now_iso())
    subject = f"{record['deployment_id']}@{record['version']}"
    out = []
    for field, severity in DRIFT_SEVERITY.items():
        reviewed, seen = record.get(field), observed.get(field)
        if reviewed is None or seen is None:
            continue
        if field == "model_id":
            if reviewed in seen:
                continue
            seen = seen[0] if len(seen) == 1 else seen
        elif str(reviewed).lower() == str(seen).lower():
            continue
        detail = {"reason": f"the running NIM reports {field} {_text(seen)}, its registered version "
                            f"{record['version']} says {_text(reviewed)}",
                  "deployment_id": record["deployment_id"], "deployment_version": record["version"],
                  "field": field, "reviewed": reviewed, "observed": seen,
                  "source": observation.get("source"), "endpoint": observation.get("endpoint"),
                  "source_line": source_of(observation, field),
                  "observed_at": observation.get("observed_at"), "reviewed_by": record.get("reviewed_by")}
        finding = new_finding("deployment_drift", subject, [subject], at, detail, severity=severity,
                              distinguishing=(field, records.canonical_bytes(seen).decode()))
        out.append({**finding, "version": 1, "observed_at": now or at})
    return out


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else records.canonical_bytes(value).decode()


def _registry(known: Registry | Iterable[dict[str, Any]]) -> Registry:
    return known if isinstance(known, Registry) else Registry(known)


def unknown_deployment(identity: Identity, known: Registry | Iterable[dict[str, Any]], at: Any, *,
                       now: str | None = None) -> dict[str, Any] | None:
    """A finding when `identity` matches no deployment registered at `at`; None when it
    matches one, or when it says nothing at all (nothing to attribute)."""
    if identity.is_empty():
        return None
    registry = _registry(known)
    if registry.match(identity, at) is not None:
        return None
    return _unknown(identity.describe(), identity, registry, at, now)


def _unknown(subject: str, identity: Identity, registry: Registry, at: Any, now: str | None,
             **extra: Any) -> dict[str, Any]:
    detected_at = iso(at)
    detail = {"reason": "a NIM that no registered deployment covers at this time",
              "identity": {k: v for k, v in identity.__dict__.items() if v is not None},
              "first_seen_at": detected_at, "registered_deployments": len(registry), **extra}
    return {**unknown_deployment_finding(subject, [subject], detected_at, detail),
            "version": 1, "observed_at": now or detected_at}


def observation_identity(observation: dict[str, Any]) -> Identity:
    """Who an observation is about: the deployment it names, else the address it was
    polled at (the collector names an unconfigured target by its host:port, which is an
    address, not a deployment id), and the model when it serves exactly one."""
    endpoint = observation.get("endpoint") or ""
    address = urlsplit(endpoint).netloc if "://" in endpoint else None
    named = observation.get("deployment")
    models = served_models((observation.get("facts") or {}).get("models"))
    return Identity(deployment=named if named and named != address else None, host_port=address or None,
                    model=models[0] if len(models) == 1 else None)


# A NIM logs its startup (and may answer /v1/metadata) before its rollout is complete, so
# before the version that rollout registers takes effect: loading a large model's weights
# takes minutes.
STARTUP_GRACE_S = 600.0


def check_observation(known: Registry | Iterable[dict[str, Any]], observation: dict[str, Any], *,
                      now: str | None = None, grace: float = STARTUP_GRACE_S) -> list[dict[str, Any]]:
    """Findings for one `nimtrail.raw.observations` message: drift when it contradicts every
    version of its deployment in force from the observation's time to `grace` later (the
    version running then, or the one its rollout is about to register), or
    unknown_deployment when no registered deployment covers what it is about in that time."""
    registry = _registry(known)
    at = observation.get("observed_at") or now or records.now_iso()
    identity = observation_identity(observation)
    candidates = []
    for when in (at, iso(parse_time(at) + _dt.timedelta(seconds=grace))):
        matched = registry.match(identity, when)
        if matched is not None and matched not in candidates:
            candidates.append(matched)
    if candidates:
        judged = [drift(registry.get(*matched), observation, now=now) for matched in candidates]
        return [] if any(not found for found in judged) else judged[0]
    endpoint = observation.get("endpoint")
    subject = f"endpoint:{endpoint or 'unknown'}" if identity.is_empty() else identity.describe()
    return [_unknown(subject, identity, registry, at, now, source=observation.get("source"),
                     endpoint=endpoint)]
