"""Where alerts go, and in what shape: Prometheus Alertmanager (its v2 API) and a generic
JSON webhook. Each receiver turns raised alerts into requests and POSTs them; a failure
raises `DeliveryFailed`, which the alert loop retries with backoff."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from nimtrail.config import AlertsConfig
from nimtrail.errors import TransientError

ALERTMANAGER_PATH = "/api/v2/alerts"
# Alertmanager takes a list of alerts per request; a backlog goes in requests of this many.
ALERTMANAGER_BATCH = 100


class DeliveryFailed(TransientError):
    """A receiver did not take an alert; `reason` is a short label for counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Alert:
    """One raised alert: a finding group and the finding that raised it."""

    kind: str
    deployment: str | None
    tool: str | None
    policy: str | None
    severity: str | None
    finding: dict[str, Any]  # finding_id, subject_ids, detected_at, severity, detail
    raised_at: str
    trace_url: str

    @property
    def group(self) -> dict[str, str | None]:
        return {"kind": self.kind, "deployment": self.deployment, "tool": self.tool, "policy": self.policy}

    def summary(self) -> str:
        about = [f"{k} {v}" for k, v in (("deployment", self.deployment), ("tool", self.tool),
                                         ("policy", self.policy)) if v]
        return f"{self.severity or 'unknown'} {self.kind}" + (f" ({', '.join(about)})" if about else "")


def trace_url(app_url: str, subject_ids: list[str] | None) -> str:
    """The app's page for what a finding is about: Trace back from its first subject (an
    action, tool call or model call id), or the Findings page when it names none."""
    base = app_url.rstrip("/")
    return f"{base}/trace-back?id={quote(subject_ids[0], safe='')}" if subject_ids else f"{base}/findings"


def post_json(url: str, body: Any, token_file: str, timeout: float) -> None:
    """POST `body` as JSON; any answer but 2xx raises DeliveryFailed."""
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "nimtrail-warehouse"})
    if token_file:
        try:
            token = Path(token_file).read_text().strip()  # re-read: mounted secrets rotate
        except OSError as e:
            raise DeliveryFailed("token_file", f"cannot read {token_file} ({e.strerror})") from e
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as e:
        raise DeliveryFailed(f"http_{e.code}", f"{url} answered {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DeliveryFailed("unreachable", f"{url}: {e}") from e


class Receiver:
    """A place alerts are POSTed to: `batches` groups alerts into request bodies."""

    name = ""
    batch = 1

    def __init__(self, url: str, token_file: str, timeout: float):
        self.url = url
        self.token_file = token_file
        self.timeout = timeout

    def body(self, alerts: list[Alert]) -> Any:
        raise NotImplementedError

    def send(self, alerts: list[Alert]) -> None:
        post_json(self.url, self.body(alerts), self.token_file, self.timeout)


class Alertmanager(Receiver):
    """`POST /api/v2/alerts` with a list of postable alerts. Labels identify an alert to
    Alertmanager (its own deduplication and grouping work on them); annotations carry the
    summary and the link back. No endsAt: Alertmanager resolves it after its
    resolve_timeout, and the finding stays in the audit trail."""

    name = "alertmanager"
    batch = ALERTMANAGER_BATCH

    def __init__(self, url: str, token_file: str, timeout: float):
        base = url.rstrip("/")
        super().__init__(base if base.endswith(ALERTMANAGER_PATH) else base + ALERTMANAGER_PATH,
                         token_file, timeout)

    def body(self, alerts: list[Alert]) -> list[dict[str, Any]]:
        return [self.postable(a) for a in alerts]

    @staticmethod
    def postable(alert: Alert) -> dict[str, Any]:
        labels = {"alertname": f"nimtrail_{alert.kind}", "severity": alert.severity or "unknown",
                  **{k: v for k, v in alert.group.items() if k != "kind" and v}}
        detail = alert.finding.get("detail") or {}
        annotations = {"summary": alert.summary(), "trace_url": alert.trace_url,
                       "finding_id": alert.finding["finding_id"],
                       "subject_ids": ", ".join(alert.finding.get("subject_ids") or [])}
        if isinstance(detail, dict) and detail.get("reason"):
            annotations["description"] = str(detail["reason"])
        return {"labels": labels, "annotations": annotations,
                "startsAt": alert.finding.get("detected_at") or alert.raised_at,
                "generatorURL": alert.trace_url}


class Webhook(Receiver):
    """One POST per finding group: the group's columns as the findings query names them,
    its severity, the finding that raised it (`latest`) and the link back."""

    name = "webhook"

    def body(self, alerts: list[Alert]) -> dict[str, Any]:
        (alert,) = alerts
        return {**alert.group, "severity": alert.severity, "summary": alert.summary(),
                "raised_at": alert.raised_at, "trace_url": alert.trace_url, "latest": alert.finding,
                "source": "nimtrail"}


def receivers(config: AlertsConfig) -> list[Receiver]:
    """The configured receivers (an empty URL is none)."""
    found: list[Receiver] = []
    if config.alertmanager_url:
        found.append(Alertmanager(config.alertmanager_url, config.alertmanager_token_file, config.timeout))
    if config.webhook_url:
        found.append(Webhook(config.webhook_url, config.webhook_token_file, config.timeout))
    return found
