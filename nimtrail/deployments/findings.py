"""Governance findings about deployments, as canonical `finding` records (pure functions).

- `deployment_drift`: a running container reports a profile, image, model or release that
  differs from its reviewed record. One finding per (deployment version, field, observed
  value): the same drift seen again has the same finding_id, so re-emitting it is a no-op.
- `unknown_deployment`: telemetry whose identity matches no registered deployment at its
  time. One finding per identity, however much telemetry it sends.
"""

from __future__ import annotations

from typing import Any, Iterable

from nimtrail import records
from nimtrail.deployments.observations import observed_fields, served_models
from nimtrail.deployments.registry import Identity, Registry
from nimtrail.deployments.versions import iso

# What is compared, and how much it matters when it differs.
DRIFT_SEVERITY = {"nim_image": "high", "image_digest": "high", "model_id": "high",
                  "profile_id": "medium", "profile_name": "medium", "nim_release": "medium"}


def finding_id(kind: str, subject_ids: list[str], *parts: Any) -> str:
    """Deterministic: sha256 over the kind, the subjects and what distinguishes the finding."""
    return records.sha256_hex([kind, sorted(subject_ids), [str(p) for p in parts]])


def make_finding(kind: str, severity: str, subject_ids: list[str], detail: dict[str, Any],
                 detected_at: str, key: tuple[Any, ...] = (), observed_at: str | None = None) -> dict[str, Any]:
    return records.new("finding", finding_id=finding_id(kind, subject_ids, *key), kind=kind,
                       severity=severity, subject_ids=subject_ids, detected_at=detected_at,
                       detail=detail, version=1, observed_at=observed_at or detected_at)


def _observed(observation: dict[str, Any]) -> dict[str, Any]:
    facts = observation.get("facts") or {}
    fields = observed_fields(facts)
    models = served_models(facts.get("models"))
    if models:
        fields["model_id"] = models  # every served model counts: the reviewed one must be among them
    return fields


def drift(record: dict[str, Any], observation: dict[str, Any], *,
          now: str | None = None) -> list[dict[str, Any]]:
    """Findings for every reviewed field the observation contradicts.

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
        detail = {"deployment_id": record["deployment_id"], "deployment_version": record["version"],
                  "field": field, "reviewed": reviewed, "observed": seen,
                  "source": observation.get("source"), "endpoint": observation.get("endpoint"),
                  "observed_at": observation.get("observed_at"), "reviewed_by": record.get("reviewed_by")}
        out.append(make_finding("deployment_drift", severity, [subject], detail, at,
                                key=(field, records.canonical_bytes(seen).decode()),
                                observed_at=now or at))
    return out


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
    detected_at = iso(at)
    subject = identity.describe()
    detail = {"identity": {k: v for k, v in identity.__dict__.items() if v is not None},
              "first_seen_at": detected_at, "registered_deployments": len(registry)}
    return make_finding("unknown_deployment", "high", [subject], detail, detected_at,
                        observed_at=now or detected_at)


def check_observation(known: Registry | Iterable[dict[str, Any]], observation: dict[str, Any], *,
                      now: str | None = None) -> list[dict[str, Any]]:
    """Findings for one `nimtrail.raw.observations` message: drift against the version of its
    deployment valid at the observation's time, or unknown_deployment when the deployment it
    names was not registered then."""
    registry = _registry(known)
    deployment_id = observation.get("deployment")
    at = observation.get("observed_at") or now or records.now_iso()
    record = registry.as_of(deployment_id, at) if deployment_id else None
    if record is None:
        subject = f"deployment:{deployment_id or observation.get('endpoint') or 'unknown'}"
        detail = {"deployment_id": deployment_id, "endpoint": observation.get("endpoint"),
                  "source": observation.get("source"), "first_seen_at": iso(at)}
        return [make_finding("unknown_deployment", "high", [subject], detail, iso(at),
                             observed_at=now or iso(at))]
    return drift(record, observation, now=now)
