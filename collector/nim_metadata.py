"""nim-metadata receiver: poll each NIM's management API and send what it says about
itself, when that changes, as observations (nimtrail/raw.py, topic
TopicsConfig.observations, keyed by deployment).

Every `interval` (collector.nim_metadata, plus the targets Kubernetes discovery finds) it GETs `/v1/metadata`, `/v1/version`,
`/v1/models` and `/v1/health/ready`. The facts are {"metadata", "version", "models":
the JSON answers, each left out when its endpoint did not answer with JSON; "ready":
whether /v1/health/ready answered 200}. An observation with all of them is sent on the
first poll and whenever any of them changes (fields that change on every request, such
as a model's `created` time, are ignored for that comparison). A non-JSON answer goes to
the dead-letter topic.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import orjson

from collector.events import ItemsReceived, PollFailed
from collector.http_fetch import FetchError, fetch
from collector.schedule import Scheduler
from collector.sink import Sink
from nimtrail import raw
from nimtrail.config import CollectorConfig, MetadataTarget, TopicsConfig
from nimtrail.errors import PermanentError, TransientError
from nimtrail.records import now_iso

log = logging.getLogger(__name__)

RECEIVER = "nim_metadata"
ENDPOINTS = {"metadata": "/v1/metadata", "version": "/v1/version", "models": "/v1/models"}
READY = "/v1/health/ready"
MAX_BYTES = 4 * 1024 * 1024


def deployment_of(target: MetadataTarget) -> str:
    return target.deployment or urlsplit(target.url).netloc


def stable(facts: dict[str, Any]) -> bytes:
    """What decides whether facts changed: without per-request fields."""
    view = dict(facts)
    models = view.get("models")
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        view["models"] = {**models, "data": [
            {k: v for k, v in m.items() if k != "created"} if isinstance(m, dict) else m
            for m in models["data"]]}
    return orjson.dumps(view, option=orjson.OPT_SORT_KEYS)


class NimMetadataReceiver:
    def __init__(self, collector: CollectorConfig, topics: TopicsConfig, sink: Sink):
        self.targets = collector.nim_metadata
        self._discovered: tuple[MetadataTarget, ...] = ()
        self._discovery = collector.kubernetes_discovery.enabled
        self.topic = topics.observations
        self.sink = sink
        self.scheduler = Scheduler("collector-nim-metadata", workers=2)
        self._last: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.targets or self._discovery:
            self._set_jobs()
            self.scheduler.start()

    def _set_jobs(self) -> None:
        with self._lock:
            targets = self.targets + self._discovered
            self.scheduler.set_jobs({f"{t.url}|{t.deployment}": (float(t.interval), lambda t=t: self.poll(t))
                                     for t in targets})

    def set_discovered(self, targets: tuple[MetadataTarget, ...]) -> None:
        """Replace the discovered targets; a target that stays keeps its cadence."""
        with self._lock:
            self._discovered = tuple(targets)
        self._set_jobs()

    def stop(self) -> None:
        self.scheduler.stop()

    def facts(self, target: MetadataTarget) -> dict[str, Any]:
        base = target.url.rstrip("/")
        timeout = min(float(target.timeout), float(target.interval))
        facts: dict[str, Any] = {}
        for key, path in ENDPOINTS.items():
            url = base + path
            try:
                response = fetch(url, timeout=timeout, accept="application/json", max_bytes=MAX_BYTES)
            except FetchError as e:
                PollFailed(endpoint=url, reason=e.reason, detail=e.detail).emit(self.sink.metrics, log)
                continue
            if response.status != 200:
                PollFailed(endpoint=url, reason=f"http_{response.status}",
                           detail=f"answered HTTP {response.status}").emit(self.sink.metrics, log)
                continue
            try:
                facts[key] = orjson.loads(response.body)
            except orjson.JSONDecodeError as e:
                self.sink.reject(RECEIVER, PermanentError("not_json", f"{url} answered non-JSON: {e}"),
                                 response.body, url)
        try:
            ready = fetch(base + READY, timeout=timeout, accept="application/json", max_bytes=MAX_BYTES)
            facts["ready"] = ready.status == 200
        except FetchError as e:
            PollFailed(endpoint=base + READY, reason=e.reason, detail=e.detail).emit(self.sink.metrics, log)
            facts["ready"] = False
        return facts

    def poll(self, target: MetadataTarget) -> bool:
        """Poll one NIM; True if an observation was sent (its facts changed)."""
        facts = self.facts(target)
        key = f"{target.url}|{target.deployment}"
        fingerprint = stable(facts)
        with self._lock:
            if self._last.get(key) == fingerprint:
                return False
        deployment = deployment_of(target)
        doc = {"deployment": deployment, "source": "nim-metadata", "endpoint": target.url,
               "observed_at": now_iso(), "facts": facts}
        ItemsReceived(receiver=RECEIVER, items=1).emit(self.sink.metrics, log)
        try:
            self.sink.forward(RECEIVER, self.topic, deployment.encode(), raw.encode(doc), 1)
        except (TransientError, PermanentError) as e:
            log.warning("Observation of %s could not be forwarded, the next poll retries: %s", target.url, e)
            return False
        with self._lock:
            self._last[key] = fingerprint  # only once durable: a failed send is retried next poll
        return True


def build(collector: CollectorConfig, topics: TopicsConfig, sink: Sink) -> NimMetadataReceiver:
    """The poller; `start()` begins polling (nothing to do without targets)."""
    return NimMetadataReceiver(collector, topics, sink)
