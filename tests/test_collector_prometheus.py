"""Scraping real prometheus-client exposition: a NIM at /v1/metrics, a NIM 1.0 that only
serves /metrics, a DCGM exporter, a target that is down, one that answers HTML, and a
targets file that changes while the collector runs."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import yaml
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app,
                               start_http_server)

from collector.prometheus import parse
from cli.broker import free_port
from nimtrail.errors import PermanentError
from tests.collector_support import TopicReader, headers, metric, running
from tests.harness import Env


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def _serve(app) -> tuple[WSGIServer, int]:
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_port


def _nim_registry(model: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "running", ["model_name"], registry=registry).labels(model).set(2)
    ttft = Histogram("vllm:time_to_first_token_seconds", "ttft", ["model_name"], registry=registry,
                     buckets=(0.05, 0.1, 1.0))
    ttft.labels(model).observe(0.042)
    Counter("vllm:prompt_tokens", "prompt tokens", ["model_name"], registry=registry).labels(model).inc(120)
    return registry


def _dcgm_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    util = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization", ["gpu", "UUID", "modelName", "Hostname"],
                 registry=registry)
    util.labels("0", "GPU-1234", "NVIDIA H100 80GB HBM3", "node-1").set(87)
    return registry


def _text_format(registry: CollectorRegistry):
    """An exporter that speaks only the Prometheus text format, as dcgm-exporter does."""
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
        return [generate_latest(registry)]
    return app


def _html(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html")])
    return [b"<html><body>Login required</body></html>"]


@pytest.fixture
def targets(tmp_path):
    nim_server, nim_thread = start_http_server(0, "127.0.0.1", registry=_nim_registry("meta/llama-3.1-8b-instruct"))
    old_app = make_wsgi_app(_nim_registry("meta/llama3-8b-instruct"))

    def nim_1_0(environ, start_response):  # NIM 1.0.0 served only /metrics
        if environ["PATH_INFO"] != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        return old_app(environ, start_response)

    servers = [_serve(nim_1_0), _serve(_text_format(_dcgm_registry())), _serve(_html)]
    urls = {"nim": f"http://127.0.0.1:{nim_server.server_port}/v1/metrics",
            "nim_1_0": f"http://127.0.0.1:{servers[0][1]}",
            "dcgm": f"http://127.0.0.1:{servers[1][1]}/metrics",
            "html": f"http://127.0.0.1:{servers[2][1]}/metrics",
            "down": f"http://127.0.0.1:{free_port()}/metrics"}
    yield urls
    nim_server.shutdown()
    for server, _port in servers:
        server.shutdown()


def test_scrapes_nim_dcgm_and_reports_down_and_bad_targets(tmp_path, kafka_bootstrap, targets):
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(yaml.safe_dump([{"url": targets["dcgm"], "deployment": "prod/llama-3-1-8b",
                                             "job": "dcgm", "interval": "200ms", "timeout": "200ms"}]))
    static = [{"url": targets["nim"], "deployment": "prod/llama-3-1-8b", "interval": "200ms", "timeout": "200ms"},
              {"url": targets["nim_1_0"], "deployment": "prod/llama3-old", "interval": "200ms", "timeout": "200ms"},
              {"url": targets["html"], "deployment": "prod/broken", "interval": "200ms", "timeout": "200ms"},
              {"url": targets["down"], "deployment": "prod/gone", "interval": "200ms", "timeout": "200ms"}]
    env = Env(tmp_path, kafka_bootstrap, collector={"scrape": static, "scrape_file": str(targets_file)})
    scrapes = TopicReader(kafka_bootstrap, env.config.topics.scrapes)
    dlq = TopicReader(kafka_bootstrap, env.config.topics.dlq)

    def latest(url):
        return next((d for d in reversed(scrapes.docs()) if d["target"] == url), None)

    with running(env):
        nim = scrapes.wait(lambda _: latest(targets["nim"]), what="a scrape of the NIM")
        old = scrapes.wait(lambda _: (d := latest(targets["nim_1_0"])) and d["up"] and d, what="the NIM 1.0 scrape")
        dcgm = scrapes.wait(lambda _: latest(targets["dcgm"]), what="a scrape of DCGM from the targets file")
        down = scrapes.wait(lambda _: latest(targets["down"]), what="the down target's scrape")
        html = scrapes.wait(lambda _: latest(targets["html"]), what="the HTML target's scrape")
        letter = dlq.wait(lambda ms: next((m for m in ms if headers(m)["nimtrail.reason"] == "not_exposition_format"),
                                          None), what="the HTML body in the DLQ")

        # The targets file changes: a new target is scraped without a restart.
        targets_file.write_text(yaml.safe_dump([{"url": targets["dcgm"] + "?second", "job": "dcgm",
                                                 "deployment": "prod/other", "interval": "200ms", "timeout": "200ms"}]))
        scrapes.wait(lambda _: latest(targets["dcgm"] + "?second"), what="the target added to the file")
        failures = metric(f"{env.otlp_http}/metrics", "nimtrail_collector_scrape_failures_scrapes_total",
                          target=targets["down"], reason="connection_refused")

    assert nim["up"] == 1 and nim["job"] == "nim" and nim["deployment"] == "prod/llama-3-1-8b"
    samples = {(s["name"], s["labels"].get("le")): s for s in nim["samples"]}
    assert samples[("vllm:num_requests_running", None)]["value"] == 2
    assert samples[("vllm:num_requests_running", None)]["labels"] == {"model_name": "meta/llama-3.1-8b-instruct"}
    assert samples[("vllm:time_to_first_token_seconds_bucket", "0.05")]["value"] == 1
    assert samples[("vllm:time_to_first_token_seconds_count", None)]["value"] == 1
    assert samples[("vllm:prompt_tokens_total", None)]["value"] == 120
    assert old["up"] == 1 and any(s["labels"].get("model_name") == "meta/llama3-8b-instruct" for s in old["samples"])
    assert dcgm["job"] == "dcgm" and dcgm["samples"][0]["labels"]["modelName"] == "NVIDIA H100 80GB HBM3"
    assert down["up"] == 0 and down["samples"] == [] and "refused" in down["error"].lower()
    assert html["up"] == 0 and html["error"].startswith("not_exposition_format")
    assert letter.value == b"<html><body>Login required</body></html>"
    assert failures >= 1
    scrapes.close()
    dlq.close()


def test_parse_openmetrics_and_reject_json():
    samples = parse(b"# TYPE x counter\nx_total 3 1700000000.5\n# EOF\n", "application/openmetrics-text")
    assert samples == [{"name": "x_total", "labels": {}, "value": 3.0, "timestamp": 1700000000.5}]
    with pytest.raises(PermanentError):
        parse(b'{"metrics": []}', "application/json")
