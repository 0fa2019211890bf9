"""Kubernetes discovery: scrape and NIM metadata targets from annotated Services.

With collector.kubernetes_discovery.enabled, the collector lists Services every `interval`
through the Kubernetes API (`GET /api/v1/namespaces/{ns}/services` for each configured
namespace, or `GET /api/v1/services` for all), authenticated with the service account's
token (re-read each time: projected tokens rotate) and verified with its CA. Each Service
annotated `nimtrail.io/scrape: "true"` becomes a scrape target, and with
`nimtrail.io/metadata: "true"` a NIM metadata target too:

| annotation | meaning | default |
|---|---|---|
| `nimtrail.io/scrape` | `"true"` to scrape this Service | – |
| `nimtrail.io/deployment` | the deployment id its data belongs to (empty: none, e.g. DCGM) | `<namespace>/<name>` |
| `nimtrail.io/port` | a port number or name of the Service | the port named `http-openai`, `http`, `openai` or `api`, else the first |
| `nimtrail.io/path` | the metrics path | `/v1/metrics` |
| `nimtrail.io/scheme` | `http` or `https` | `http` |
| `nimtrail.io/metadata` | `"true"` to poll `/v1/metadata`, `/v1/version`, … | off |

Targets are `<scheme>://<name>.<namespace>.svc:<port><path>` (with `address: cluster_ip`,
the Service's cluster IP instead of its DNS name, for pods without cluster DNS; a
headless Service keeps its name), scraped every
`scrape_interval` and polled every `metadata_interval`. They are handed to the
prometheus and nim-metadata receivers whenever the set changes: a new Service is scraped
right away, a removed one no more, one that stays keeps its cadence. A failed list is
counted (nimtrail_collector_discovery_failures_total{reason}) and the previous targets
stay. A Service whose annotations cannot be used is skipped with a warning.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode

import orjson

from collector.events import DiscoveryChanged, DiscoveryFailed
from collector.http_fetch import FetchError, fetch
from collector.nim_metadata import NimMetadataReceiver
from collector.prometheus import PrometheusReceiver
from nimtrail.config import CollectorConfig, KubernetesDiscoveryConfig, MetadataTarget, ScrapeTarget
from nimtrail.ops import StageMetrics

log = logging.getLogger(__name__)

PREFIX = "nimtrail.io/"
SCRAPE, DEPLOYMENT, PORT, PATH, SCHEME, METADATA = (
    PREFIX + k for k in ("scrape", "deployment", "port", "path", "scheme", "metadata"))
ANNOTATIONS = (SCRAPE, DEPLOYMENT, PORT, PATH, SCHEME, METADATA)
DEFAULT_PATH = "/v1/metrics"
PORT_NAMES = ("http-openai", "http", "openai", "api")
PAGE = 500
MAX_LIST_BYTES = 64 * 1024 * 1024

Targets = tuple[tuple[ScrapeTarget, ...], tuple[MetadataTarget, ...]]


class ListFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _true(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "true"


def _port(service: dict[str, Any], wanted: str | None) -> int:
    """The Service port to reach; ValueError naming what is wrong."""
    ports = [p for p in (service.get("spec") or {}).get("ports") or [] if isinstance(p, dict)]
    if wanted:
        wanted = wanted.strip()
        if wanted.isdigit():
            return int(wanted)
        for p in ports:
            if p.get("name") == wanted:
                return int(p["port"])
        raise ValueError(f"{PORT}: the Service has no port named {wanted!r}")
    for name in PORT_NAMES:
        for p in ports:
            if p.get("name") == name:
                return int(p["port"])
    if ports and "port" in ports[0]:
        return int(ports[0]["port"])
    raise ValueError("the Service has no ports; set nimtrail.io/port")


def _host(service: dict[str, Any], address: str) -> str:
    meta = service.get("metadata") or {}
    ip = (service.get("spec") or {}).get("clusterIP") or ""
    if address == "cluster_ip" and ip and ip != "None":
        return f"[{ip}]" if ":" in ip else ip
    return f"{meta.get('name', '')}.{meta.get('namespace', '')}.svc"


def targets_from(services: list[dict[str, Any]], config: KubernetesDiscoveryConfig
                 ) -> tuple[Targets, list[str]]:
    """The targets the annotated Services describe, and one problem per unusable Service
    (pure: the discovery loop and the tests share it)."""
    scrapes: list[ScrapeTarget] = []
    polls: list[MetadataTarget] = []
    problems: list[str] = []
    for service in services:
        meta = service.get("metadata") or {}
        notes = meta.get("annotations") or {}
        if not _true(notes.get(SCRAPE)):
            continue
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        where = f"Service {namespace}/{name}"
        try:
            port = _port(service, notes.get(PORT))
            scheme = (notes.get(SCHEME) or "http").strip().lower()
            if scheme not in ("http", "https"):
                raise ValueError(f"{SCHEME}: expected http or https, got {scheme!r}")
            path = (notes.get(PATH) or DEFAULT_PATH).strip()
            if not path.startswith("/"):
                raise ValueError(f"{PATH}: expected a path starting with /, got {path!r}")
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{where}: {e}")
            continue
        deployment = notes.get(DEPLOYMENT)
        deployment = f"{namespace}/{name}" if deployment is None else str(deployment).strip()
        base = f"{scheme}://{_host(service, config.address)}:{port}"
        scrapes.append(ScrapeTarget(url=base + path, deployment=deployment,
                                    interval=config.scrape_interval,
                                    timeout=min(config.timeout, config.scrape_interval)))
        if _true(notes.get(METADATA)):
            polls.append(MetadataTarget(url=base, deployment=deployment, interval=config.metadata_interval,
                                        timeout=min(config.timeout, config.metadata_interval)))
    key = lambda t: (t.url, t.deployment)  # noqa: E731 - a stable order: unchanged sets compare equal
    return (tuple(sorted(scrapes, key=key)), tuple(sorted(polls, key=key))), problems


class KubernetesDiscovery:
    """Lists Services every interval and hands the targets on when they change."""

    def __init__(self, config: KubernetesDiscoveryConfig, metrics: StageMetrics,
                 on_change: Callable[[Targets], None]):
        self.config = config
        self.metrics = metrics
        self.on_change = on_change
        self.targets: Targets | None = None
        self._problems: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the Kubernetes API ----

    def _context(self) -> ssl.SSLContext | None:
        if not self.config.api_url.startswith("https://"):
            return None
        ca = Path(self.config.ca_file) if self.config.ca_file else None
        try:
            return ssl.create_default_context(cafile=str(ca) if ca and ca.exists() else None)
        except (OSError, ssl.SSLError) as e:
            raise ListFailed("bad_ca_file", f"{ca}: {e}") from e

    def _headers(self) -> dict[str, str]:
        if not self.config.token_file:
            return {}
        try:
            token = Path(self.config.token_file).read_text().strip()
        except FileNotFoundError:
            return {}  # e.g. through `kubectl proxy`, which adds its own credentials
        except OSError as e:
            raise ListFailed("token_file", f"{self.config.token_file}: {e.strerror}") from e
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _get(self, path: str, context: ssl.SSLContext | None, headers: dict[str, str]) -> dict[str, Any]:
        url = self.config.api_url.rstrip("/") + path
        try:
            response = fetch(url, timeout=float(self.config.timeout), accept="application/json",
                             max_bytes=MAX_LIST_BYTES, headers=headers, context=context)
        except FetchError as e:
            raise ListFailed(e.reason, e.detail) from e
        if response.status != 200:
            raise ListFailed(f"http_{response.status}", f"{url} answered HTTP {response.status}: "
                                                        f"{response.body[:200].decode(errors='replace')}")
        try:
            doc = orjson.loads(response.body)
        except orjson.JSONDecodeError as e:
            raise ListFailed("bad_json", f"{url}: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
            raise ListFailed("bad_json", f"{url}: not a ServiceList")
        return doc

    def list_services(self) -> list[dict[str, Any]]:
        """Every Service in the configured namespaces (all pages); ListFailed otherwise."""
        context, headers = self._context(), self._headers()
        paths = ([f"/api/v1/namespaces/{quote(ns, safe='')}/services" for ns in self.config.namespaces]
                 or ["/api/v1/services"])
        services: list[dict[str, Any]] = []
        for path in paths:
            token = ""
            while True:
                query = {"limit": PAGE, **({"continue": token} if token else {})}
                doc = self._get(f"{path}?{urlencode(query)}", context, headers)
                services.extend(s for s in doc.get("items") or [] if isinstance(s, dict))
                token = (doc.get("metadata") or {}).get("continue") or ""
                if not token:
                    break
        return services

    # ---- the loop ----

    def refresh(self) -> bool:
        """List once; hand the targets on if they changed. True if the list succeeded."""
        try:
            services = self.list_services()
        except ListFailed as e:
            DiscoveryFailed(reason=e.reason, detail=e.detail).emit(self.metrics, log)
            return False
        targets, problems = targets_from(services, self.config)
        for problem in sorted(set(problems) - self._problems):
            log.warning("Kubernetes discovery skips %s", problem)
        self._problems = set(problems)
        if targets != self.targets:
            self.targets = targets
            self.on_change(targets)
            DiscoveryChanged(scrape=len(targets[0]), metadata=len(targets[1])).emit(self.metrics, log)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - discovery must outlive any one failure
                log.exception("Kubernetes discovery failed unexpectedly")
            self._stop.wait(float(self.config.interval))

    def start(self) -> None:
        if self.config.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="collector-k8s-discovery", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=float(self.config.timeout) + 5)
            self._thread = None


def build(collector: CollectorConfig, metrics: StageMetrics, prometheus: PrometheusReceiver,
          nim_metadata: NimMetadataReceiver) -> KubernetesDiscovery:
    """Discovery feeding the two receivers (their `set_discovered`); `start()` does nothing
    unless collector.kubernetes_discovery.enabled."""
    config = collector.kubernetes_discovery
    if config.enabled and config.token_file and not config.api_url.startswith("https://"):
        log.warning("collector.kubernetes_discovery.api_url is not https: the token travels in clear")

    def on_change(targets: Targets) -> None:
        prometheus.set_discovered(targets[0])
        nim_metadata.set_discovered(targets[1])

    return KubernetesDiscovery(config, metrics, on_change)

