"""prometheus receiver: scrape NIM, vLLM and DCGM exposition and forward each scrape.

Targets: collector.scrape (static), plus collector.scrape_file, a YAML or JSON list of
the same entries, re-read when it changes (an invalid file is reported and the previous
targets stay), plus those Kubernetes discovery finds (`set_discovered`). Each target is scraped every `interval` within `timeout`, asking for
OpenMetrics and accepting the Prometheus text format; the body is parsed with
prometheus_client's parsers and forwarded as one scrapes-topic message (nimtrail/raw.py).

A NIM target configured at `/v1/metrics` (or at its base URL) falls back to `/metrics`
(NIM 1.0) when the first answers 404, and remembers that. A target that does not answer
gives an `up: 0` message with the error and a scrape_failures count; a body that is not
exposition format goes to the dead-letter topic and gives `up: 0` as well.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from collector.events import ItemsReceived, ScrapeFailed, TargetsReloaded
from collector.http_fetch import FetchError, fetch
from collector.schedule import Scheduler
from collector.sink import Sink
from nimtrail import raw
from nimtrail.config import CollectorConfig, ScrapeTarget, TopicsConfig, build_section
from nimtrail.errors import ConfigError, PermanentError, TransientError
from nimtrail.records import now_iso

log = logging.getLogger(__name__)

RECEIVER = "prometheus"
# `escaping=allow-utf-8` keeps names as the target wrote them (vLLM's `vllm:` prefix);
# without it prometheus-client rewrites them to underscores in OpenMetrics.
ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
          "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
NOT_EXPOSITION = "not_exposition_format"
FILE_CHECK_SECONDS = 1.0


def job_of(target: ScrapeTarget) -> str:
    if target.job:
        return target.job
    return "dcgm" if urlsplit(target.url).port == 9400 else "nim"


def scrape_urls(target: ScrapeTarget) -> tuple[str, str | None]:
    """(URL to scrape, fallback on 404 or None). A NIM base URL means /v1/metrics."""
    parts = urlsplit(target.url)
    if job_of(target) != "nim":
        return target.url, None
    path = parts.path.rstrip("/")
    if path in ("", "/v1/metrics"):
        first = urlunsplit(parts._replace(path="/v1/metrics"))
        return first, urlunsplit(parts._replace(path="/metrics"))
    return target.url, None


def parse(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """Samples of an exposition body; PermanentError when it is not exposition format."""
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise PermanentError(NOT_EXPOSITION, f"body is not UTF-8: {e}") from e
    parser = parse_openmetrics if content_type == "application/openmetrics-text" else parse_text
    samples = []
    try:
        for family in parser(text):
            for s in family.samples:
                ts = s.timestamp
                samples.append({"name": s.name, "labels": dict(s.labels), "value": s.value,
                                "timestamp": float(ts) if ts is not None else None})
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise PermanentError(NOT_EXPOSITION, f"{content_type or 'text'} parser: {e}") from e
    if not samples and text.strip() and not text.lstrip().startswith("#"):
        raise PermanentError(NOT_EXPOSITION, "no samples in a non-empty body")
    return samples


def read_targets_file(path: Path) -> tuple[ScrapeTarget, ...]:
    """The targets in a YAML/JSON file; ConfigError naming the file and key when invalid."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read scrape targets: {e}") from e
    return build_section(tuple[ScrapeTarget, ...], doc or [], str(path))


class PrometheusReceiver:
    def __init__(self, collector: CollectorConfig, topics: TopicsConfig, sink: Sink):
        self.static = collector.scrape
        self.file = Path(collector.scrape_file) if collector.scrape_file else None
        self.max_bytes = collector.max_body_bytes
        self.topic = topics.scrapes
        self.sink = sink
        self.scheduler = Scheduler("collector-scrape")
        self._file_targets: tuple[ScrapeTarget, ...] = ()
        self._discovered: tuple[ScrapeTarget, ...] = ()
        self._discovery = collector.kubernetes_discovery.enabled
        self._jobs_lock = threading.Lock()  # one source's update never undoes another's
        self._file_stamp: tuple[int, int] | None = None
        self._fallback: dict[str, str] = {}  # configured url -> the URL that answered instead
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.static and self.file is None and not self._discovery:
            return
        self._reload_file()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def _jobs(self) -> dict:
        jobs: dict = {}
        for target in self.static + self._file_targets + self._discovered:
            jobs[f"{target.url}|{target.deployment}"] = (float(target.interval),
                                                        lambda t=target: self.scrape(t))
        if self.file is not None:
            jobs["targets-file"] = (FILE_CHECK_SECONDS, self._reload_file)
        return jobs

    def _reload_file(self) -> None:
        if self.file is not None:
            try:
                st = os.stat(self.file)
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp != self._file_stamp:
                self._file_stamp = stamp
                try:
                    self._file_targets = read_targets_file(self.file) if stamp else ()
                    event = TargetsReloaded(path=str(self.file), outcome="loaded",
                                            detail=f"({len(self._file_targets)} targets)")
                    event.emit(self.sink.metrics, log)
                except ConfigError as e:
                    event = TargetsReloaded(path=str(self.file), outcome="invalid",
                                            detail=f"(keeping the previous targets): {e}")
                    event.emit(self.sink.metrics, log)
        with self._jobs_lock:
            self.scheduler.set_jobs(self._jobs())

    def set_discovered(self, targets: tuple[ScrapeTarget, ...]) -> None:
        """Replace the discovered targets; a target that stays keeps its cadence."""
        with self._jobs_lock:
            self._discovered = tuple(targets)
            self.scheduler.set_jobs(self._jobs())

    def scrape(self, target: ScrapeTarget) -> dict[str, Any]:
        """Scrape one target and forward the result (or its failure); returns the message."""
        started = time.monotonic()
        scraped_at = now_iso()
        samples: list[dict[str, Any]] = []
        error = None
        try:
            samples = self._samples(target)
        except FetchError as e:
            error = e.detail
            ScrapeFailed(target=target.url, reason=e.reason, detail=e.detail).emit(self.sink.metrics, log)
        except PermanentError as e:
            error = f"{e.reason}: {e.detail}"
            ScrapeFailed(target=target.url, reason=e.reason, detail=e.detail).emit(self.sink.metrics, log)
        doc = {"target": target.url, "deployment": target.deployment or None, "job": job_of(target),
               "scraped_at": scraped_at, "up": 0 if error else 1, "error": error,
               "duration_ms": round((time.monotonic() - started) * 1000, 3), "samples": samples}
        ItemsReceived(receiver=RECEIVER, items=len(samples)).emit(self.sink.metrics, log, len(samples))
        try:
            self.sink.forward(RECEIVER, self.topic, target.url.encode(), raw.encode(doc), len(samples))
        except (TransientError, PermanentError) as e:
            # Counted by the sink; the next scrape reads the same cumulative counters again.
            log.warning("Scrape of %s could not be forwarded: %s", target.url, e)
        return doc

    def _samples(self, target: ScrapeTarget) -> list[dict[str, Any]]:
        first, fallback = scrape_urls(target)
        timeout = min(float(target.timeout), float(target.interval))
        with self._lock:
            url = self._fallback.get(target.url, first)
        response = fetch(url, timeout=timeout, accept=ACCEPT, max_bytes=self.max_bytes)
        if response.status == 404 and fallback and url != fallback:
            response = fetch(fallback, timeout=timeout, accept=ACCEPT, max_bytes=self.max_bytes)
            if response.status == 200:
                log.info("%s answers at %s, not %s: using it from now on", target.url, fallback, first)
                with self._lock:
                    self._fallback[target.url] = fallback
        if response.status != 200:
            raise FetchError(f"http_{response.status}", f"{response.url} answered HTTP {response.status}")
        try:
            return parse(response.body, response.content_type)
        except PermanentError as e:
            self.sink.reject(RECEIVER, e, response.body, response.url)
            raise


def build(collector: CollectorConfig, topics: TopicsConfig, sink: Sink) -> PrometheusReceiver:
    """The scraper; `start()` begins scraping (nothing to do without targets)."""
    return PrometheusReceiver(collector, topics, sink)
