"""Kubernetes discovery: Services annotated nimtrail.io/scrape become scrape (and NIM
metadata) targets, and follow the Services as they come and go. The Kubernetes API is a
real local HTTPS server answering in the API's JSON shapes (pages and all), checking the
service account's bearer token; the NIM behind the Services is a real HTTP server."""

from __future__ import annotations

import copy
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from collector.kubernetes_sd import targets_from
from nimtrail import config as config_mod
from nimtrail.errors import ConfigError
from tests.collector_support import TopicReader, counter, running
from tests.harness import Env, wait_for
from tests.tls_support import make_pki

API_TOKEN = "eyJhbGciOi.service-account.token"


def service(name: str, namespace: str = "nim", annotations: dict | None = None, ports=None,
            cluster_ip: str = "10.96.0.12") -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {"clusterIP": cluster_ip,
                     "ports": ports if ports is not None else [{"name": "http-openai", "port": 8000}]}}


def test_annotations_make_targets():
    config = config_mod.KubernetesDiscoveryConfig(enabled=True, scrape_interval=config_mod.Duration(10))
    services = [
        service("llama", annotations={"nimtrail.io/scrape": "true", "nimtrail.io/metadata": "true"}),
        service("mistral", annotations={"nimtrail.io/scrape": "true", "nimtrail.io/deployment": "prod/mistral",
                                        "nimtrail.io/port": "metrics", "nimtrail.io/path": "/metrics"},
                ports=[{"name": "http", "port": 8000}, {"name": "metrics", "port": 9000}]),
        service("dcgm", "gpu-operator", {"nimtrail.io/scrape": "true", "nimtrail.io/deployment": "",
                                         "nimtrail.io/port": "9400", "nimtrail.io/path": "/metrics"}, ports=[]),
        service("quiet", annotations={"nimtrail.io/scrape": "false"}),
        service("plain"),
        service("broken", annotations={"nimtrail.io/scrape": "true", "nimtrail.io/port": "grpc"}),
        service("nothing", annotations={"nimtrail.io/scrape": "true"}, ports=[]),
    ]
    (scrapes, polls), problems = targets_from(services, config)
    assert [(t.url, t.deployment) for t in scrapes] == [
        ("http://dcgm.gpu-operator.svc:9400/metrics", ""),
        ("http://llama.nim.svc:8000/v1/metrics", "nim/llama"),
        ("http://mistral.nim.svc:9000/metrics", "prod/mistral")]
    assert all(t.interval == 10 for t in scrapes)
    assert [(t.url, t.deployment) for t in polls] == [("http://llama.nim.svc:8000", "nim/llama")]
    assert len(problems) == 2 and "nim/broken" in problems[0] and "'grpc'" in problems[0]
    # cluster_ip: the Service's address, except for a headless Service.
    config = config_mod.KubernetesDiscoveryConfig(address="cluster_ip")
    (scrapes, _), _ = targets_from([services[0], {**services[1], "spec": {**services[1]["spec"],
                                                                          "clusterIP": "None"}}], config)
    assert [t.url for t in scrapes] == ["http://10.96.0.12:8000/v1/metrics", "http://mistral.nim.svc:9000/metrics"]


def test_discovery_keys_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    for text, key in [("collector: {kubernetes_discovery: {api_url: kubernetes}}", "api_url"),
                      ("collector: {kubernetes_discovery: {namespaces: [Prod_NS]}}", r"namespaces\[0\]"),
                      ("collector: {kubernetes_discovery: {interval: 0s}}", "interval"),
                      ("collector: {kubernetes_discovery: {address: pod_ip}}", "address"),
                      ("collector: {kubernetes_discovery: {enable: true}}", "enable")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"collector\.kubernetes_discovery\.{key}"):
            config_mod.load(path, env={})


class FakeApi:
    """Serves ServiceLists one Service per page (continue tokens), for a bearer token."""

    def __init__(self, context: ssl.SSLContext):
        self.services: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                api.requests.append((parts.path, self.headers.get("Authorization", "")))
                if self.headers.get("Authorization") != f"Bearer {API_TOKEN}":
                    return self._send(401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized",
                                            "code": 401})
                segments = parts.path.strip("/").split("/")
                with api.lock:
                    items = copy.deepcopy(api.services)
                if segments[:3] == ["api", "v1", "namespaces"] and segments[4:] == ["services"]:
                    items = [s for s in items if s["metadata"]["namespace"] == segments[3]]
                elif segments != ["api", "v1", "services"]:
                    return self._send(404, {"kind": "Status", "code": 404})
                start = int(query.get("continue", ["0"])[0])
                page = items[start:start + 1]
                more = str(start + 1) if start + 1 < len(items) else ""
                self._send(200, {"kind": "ServiceList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": "1", **({"continue": more} if more else {})},
                                 "items": [{"kind": "Service", **s} for s in page]})

            def _send(self, status, doc):
                body = orjson.dumps(doc)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, services: list[dict]) -> None:
        with self.lock:
            self.services = services


class _Nim(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/v1/metrics":
            body, ctype = b'vllm:num_requests_running{model_name="llama"} 1\n', "text/plain"
        else:
            body, ctype = orjson.dumps({"path": self.path, "release": "1.8.0"}), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_annotated_services_are_scraped_and_followed(tmp_path, kafka_bootstrap):
    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    api = FakeApi(context)
    nim = ThreadingHTTPServer(("127.0.0.1", 0), _Nim)
    threading.Thread(target=nim.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text(API_TOKEN + "\n")
    port = nim.server_port
    annotated = {"nimtrail.io/scrape": "true", "nimtrail.io/deployment": "nim/llama-3-1-8b",
                 "nimtrail.io/metadata": "true"}
    api.set([service("llama", annotations=annotated, cluster_ip="127.0.0.1",
                     ports=[{"name": "http-openai", "port": port}]),
             service("unrelated", ports=[{"name": "http", "port": 1}]),
             service("elsewhere", "other", annotations=annotated)])
    env = Env(tmp_path, kafka_bootstrap, collector={"kubernetes_discovery": {
        "enabled": True, "namespaces": ["nim"], "api_url": f"https://127.0.0.1:{api.server.server_port}",
        "token_file": str(token), "ca_file": str(pki.ca), "interval": "200ms", "address": "cluster_ip",
        "scrape_interval": "500ms", "metadata_interval": "1s"}})
    t = env.config.topics
    scrapes, observations = TopicReader(kafka_bootstrap, t.scrapes), TopicReader(kafka_bootstrap, t.observations)
    target = f"http://127.0.0.1:{port}/v1/metrics"

    def scraped(deployment: str) -> list[dict]:
        return [d for d in scrapes.docs() if d["deployment"] == deployment and d["up"] == 1]

    try:
        with running(env) as collector:
            first = wait_for(lambda: scraped("nim/llama-3-1-8b"), 30, what="a scrape of the annotated Service")
            assert first[0]["target"] == target
            assert first[0]["samples"][0]["name"] == "vllm:num_requests_running"
            observed = observations.wait(lambda ms: ms, what="a metadata observation")
            doc = orjson.loads(observed[0].value)
            assert doc["deployment"] == "nim/llama-3-1-8b" and doc["facts"]["version"]["release"] == "1.8.0"
            # Only the configured namespace was listed, page by page, with the token.
            assert {p for p, _ in api.requests} == {"/api/v1/namespaces/nim/services"}
            assert {a for _, a in api.requests} == {f"Bearer {API_TOKEN}"}

            # A new annotated Service is picked up; a removed one is no longer scraped.
            mistral = {**annotated, "nimtrail.io/deployment": "nim/mistral-7b", "nimtrail.io/metadata": "false"}
            api.set([service("mistral", annotations=mistral, cluster_ip="127.0.0.1",
                             ports=[{"name": "http-openai", "port": port}])])
            wait_for(lambda: len(scraped("nim/mistral-7b")) >= 1, 30, what="the new Service's scrape")
            gone = len(scraped("nim/llama-3-1-8b"))
            wait_for(lambda: len(scraped("nim/mistral-7b")) >= 4, 30, what="more scrapes of the new Service")
            assert len(scraped("nim/llama-3-1-8b")) <= gone + 1  # at most one was already under way

            # A token the API refuses: counted, and the targets found before stay.
            token.write_text("revoked\n")
            wait_for(lambda: counter(collector, "nimtrail_collector_discovery_failures_total",
                                     reason="http_401"), 30, what="the refused list to be counted")
            now = len(scraped("nim/mistral-7b"))
            wait_for(lambda: len(scraped("nim/mistral-7b")) > now, 30, what="scrapes to go on")
    finally:
        scrapes.close()
        observations.close()
        api.server.shutdown()
        nim.shutdown()
