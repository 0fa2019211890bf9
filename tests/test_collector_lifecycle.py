"""Every receiver at once: configured from YAML, started, one record through each, /healthz
and /metrics answering, stopped twice. And the collector's config keys and their errors."""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from nimtrail import config as config_mod
from nimtrail.errors import ConfigError
from tests.collector_support import TopicReader, metric, running
from tests.harness import Env, http_ok


class _Nim(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"num_requests_running 1\n" if self.path.endswith("metrics") else b'{"release": "1.0.0"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_all_receivers_start_take_one_record_and_stop_twice(tmp_path, kafka_bootstrap):
    nim = ThreadingHTTPServer(("127.0.0.1", 0), _Nim)
    threading.Thread(target=nim.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{nim.server_port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("one line\n")
    env = Env(tmp_path, kafka_bootstrap, collector={
        "filelog": [{"include": [str(logs / "*.log")], "poll_interval": "50ms"}],
        "scrape": [{"url": f"{url}/v1/metrics", "interval": "1s"}],
        "nim_metadata": [{"url": url, "interval": "1s"}]})
    t = env.config.topics
    readers = {name: TopicReader(kafka_bootstrap, getattr(t, name))
               for name in ("otlp_spans", "nimlogs", "scrapes", "observations")}
    with running(env) as collector:
        request = trace_service_pb2.ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "one"
        with grpc.insecure_channel(f"127.0.0.1:{env.ports['grpc']}") as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
        post = urllib.request.Request(f"{env.otlp_http}/v1/nimlogs?source=x", data=b"posted line\n",
                                      headers={"Content-Type": "text/plain"})
        assert urllib.request.urlopen(post, timeout=10).status == 200
        for name, reader in readers.items():
            reader.wait(lambda ms: ms, what=f"one record on {name}")
        assert http_ok(f"{env.otlp_http}/healthz")
        assert metric(f"{env.otlp_http}/metrics", "nimtrail_collector_forwarded_items_total",
                      receiver="otlp_grpc/traces") == 1
        collector.stop()
        collector.stop()  # a second stop is harmless
    nim.shutdown()
    for reader in readers.values():
        reader.close()


def test_collector_keys_load_and_bad_values_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("""
collector:
  max_line_bytes: 65536
  ack_timeout: 2s
  buffer: {max_bytes: 1000000, segment_bytes: 100000}
  filelog:
    - {include: ["/var/log/pods/*/nim/*.log"], exclude: ["*.gz"], deployment: prod/llama, start_at: end, format: cri}
  scrape:
    - {url: "http://llama:8000", deployment: prod/llama, interval: 15s, timeout: 5s}
    - {url: "http://node-1:9400/metrics", job: dcgm, deployment: prod/llama}
  scrape_file: /etc/nimtrail/targets.yaml
  nim_metadata:
    - {url: "http://llama:8000", deployment: prod/llama, interval: 60s, timeout: 5s}
""")
    config = config_mod.load(path, env={"NIMTRAIL_COLLECTOR__BUFFER__MAX_BYTES": "0"})
    c = config.collector
    assert c.buffer.max_bytes == 0 and c.buffer.segment_bytes == 100000  # the environment wins
    assert c.filelog[0].format == "cri" and c.filelog[0].exclude == ("*.gz",)
    assert c.scrape[1].job == "dcgm" and c.scrape[1].interval == 15
    assert config.buffer_path == config.collector_path / "buffer"

    for text, key in [
        ("collector: {filelog: [{include: [x], format: json}]}", "collector.filelog[0].format"),
        ("collector: {filelog: [{include: [x], tail: yes}]}", "collector.filelog[0].tail"),
        ("collector: {buffer: {max_bytes: -1}}", "collector.buffer.max_bytes"),
        ("collector: {scrape: [{url: 'http://x', interval: 5s, timeout: 0s}]}", "collector.scrape[0].timeout"),
        ("collector: {max_line_bytes: 10485760}", "collector.max_line_bytes"),
        ("collector: {nim_metadata: [{url: 'ftp://x'}]}", "collector.nim_metadata[0].url"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            config_mod.load(path, env={})
