"""How fast the collector forwards, against a raw kafka-python producer sending the same
bytes in the same run (so the ratio shows the collector's own cost, not the machine's).

    python -m bench.collector_bench [--bootstrap 127.0.0.1:19092] [--spans 200000] [--lines 400000]

It starts a collector process (`nimtrail collector`) on free ports with topics of its own,
then measures from the outside:
- spans/s over OTLP/HTTP and OTLP/gRPC: pre-built export requests (realistic GenAI spans)
  sent by several client threads, each request answered only once durable in Kafka;
- log lines/s through filelog: a NIM JSONL log file tailed from its beginning, until the
  last line is durable;
- the same bytes with kafka-python directly: one message per export request, and nimlogs
  batches of the same size, with the collector's producer settings (acks=all, idempotent).
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import orjson
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from collector import nimlogs
from collector.filelog import MAX_BATCH_LINES
from nimtrail import config as config_mod, kafka_io
from cli.broker import free_port

REPO = Path(__file__).resolve().parent.parent
SPANS_PER_REQUEST = 500
CLIENTS = 8


def _config(tmp: Path, bootstrap: str, log_glob: str) -> tuple[config_mod.Config, Path]:
    suffix = uuid.uuid4().hex[:8]
    topics = {k: f"bench.{v}.{suffix}" for k, v in config_mod.as_dict(config_mod.Config())["topics"].items()}
    doc = {"data_dir": str(tmp / "data"), "kafka": {"bootstrap": bootstrap}, "topics": topics,
           "collector": {"otlp_http": f"127.0.0.1:{free_port()}", "otlp_grpc": f"127.0.0.1:{free_port()}",
                         "filelog": [{"include": [log_glob], "deployment": "bench/llama", "poll_interval": "20ms"}]}}
    path = tmp / "bench.yaml"
    path.write_text(orjson.dumps(doc).decode())
    return config_mod.load(path, env={}), path


def _start_collector(config_path: Path, config: config_mod.Config, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")}
    process = subprocess.Popen([sys.executable, "-m", "nimtrail", "--config", str(config_path), "collector"],
                               cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{config.collector.otlp_http.port}/healthz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the collector exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the collector did not become healthy within 60s")


def _attr(key: str, value) -> common_pb2.KeyValue:
    any_value = (common_pb2.AnyValue(int_value=value) if isinstance(value, int)
                 else common_pb2.AnyValue(string_value=str(value)))
    return common_pb2.KeyValue(key=key, value=any_value)


def _requests(count: int) -> list[bytes]:
    """Export requests of SPANS_PER_REQUEST chat spans each, with GenAI attributes."""
    out = []
    for r in range(count):
        request = trace_service_pb2.ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.extend([_attr("service.name", "bench-agent"), _attr("k8s.namespace.name", "prod")])
        spans = rs.scope_spans.add().spans
        for i in range(SPANS_PER_REQUEST):
            span = spans.add()
            span.trace_id, span.span_id = os.urandom(16), os.urandom(8)
            span.name = "chat meta/llama-3.1-8b-instruct"
            span.kind = 3
            span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
            span.end_time_unix_nano = span.start_time_unix_nano + 310_000_000
            span.attributes.extend([
                _attr("gen_ai.operation.name", "chat"), _attr("gen_ai.request.model", "meta/llama-3.1-8b-instruct"),
                _attr("gen_ai.response.id", f"chatcmpl-{r:06d}{i:06d}"), _attr("gen_ai.usage.input_tokens", 120),
                _attr("gen_ai.usage.output_tokens", 24), _attr("server.address", "llama.nim.svc"),
                _attr("server.port", 8000), _attr("enduser.id", "alice")])
        out.append(request.SerializeToString())
    return out


def _log_lines(count: int) -> list[bytes]:
    return [orjson.dumps({"level": "INFO", "time": "2026-03-03 12:00:10", "file_name": "api_server.py",
                          "line_number": 42, "message": f"10.28.1.1:49420 - \"POST /v1/chat/completions HTTP/1.1\" 200 req-{i}"})
            for i in range(count)]


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _send_http(port: int, bodies: list[bytes]) -> None:
    def worker(chunk: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body in chunk:
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"collector answered {response.status}")
        conn.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, [bodies[i::CLIENTS] for i in range(CLIENTS)]))


def _send_grpc(port: int, bodies: list[bytes]) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda body: export(body, timeout=60), bodies))
    channel.close()


def _raw(config: config_mod.Config, topic: str, values: list[bytes]) -> float:
    """kafka-python alone, the collector's settings, waiting for every acknowledgement."""
    producer = kafka_io.producer(config)
    producer.send(topic, b"warm-up").get(timeout=30)

    def run() -> None:
        futures = [producer.send(topic, value=v) for v in values]
        for future in futures:
            future.get(timeout=120)

    elapsed = _timed(run)
    producer.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("NIMTRAIL_TEST_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--spans", type=int, default=200_000, help="spans per OTLP protocol")
    parser.add_argument("--lines", type=int, default=400_000, help="log lines through filelog")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        logs = tmp / "logs"
        logs.mkdir()
        config, config_path = _config(tmp, args.bootstrap, str(logs / "*.log"))
        raw_topic = config.topics.otlp_spans + ".raw"
        kafka_io.ensure_topics(config, [raw_topic])
        bodies = _requests(max(1, args.spans // SPANS_PER_REQUEST))
        spans = len(bodies) * SPANS_PER_REQUEST
        mb = sum(map(len, bodies)) / 1e6
        lines = _log_lines(args.lines)
        http_port, grpc_port = config.collector.otlp_http.port, config.collector.otlp_grpc.port
        collector = _start_collector(config_path, config, tmp / "collector.log")
        try:
            # Warm the path (connections, topic metadata) before measuring.
            _send_http(http_port, bodies[:CLIENTS])
            http_s = _timed(lambda: _send_http(http_port, bodies))
            grpc_s = _timed(lambda: _send_grpc(grpc_port, bodies))
            raw_spans_s = _raw(config, raw_topic, bodies)

            offsets = config.collector_path / "filelog-offsets.json"
            log_file = logs / "nim.log"
            data = b"\n".join(lines) + b"\n"

            def tailed() -> None:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    if offsets.exists():
                        files = orjson.loads(offsets.read_bytes())["files"].values()
                        if any(f["emitted"] == len(data) for f in files):
                            return
                    time.sleep(0.01)
                raise SystemExit("the collector did not finish the log file within 300s")

            log_file.write_bytes(data)
            lines_s = _timed(tailed)
        finally:
            collector.terminate()
            collector.wait(timeout=60)
        batches = []
        for i in range(0, len(lines), MAX_BATCH_LINES):
            chunk = [nimlogs.line(line.decode(), 0, None, None) for line in lines[i:i + MAX_BATCH_LINES]]
            batches += nimlogs.encode_batches(chunk, receiver="filelog", source=str(log_file),
                                              deployment="bench/llama", file=str(log_file))
        raw_lines_s = _raw(config, raw_topic, batches)

    print(f"collector benchmark against Kafka at {args.bootstrap} ({os.cpu_count()} cores)")
    print(f"  OTLP/HTTP  {spans:>8} spans in {http_s:6.2f} s = {spans / http_s:>10,.0f} spans/s "
          f"({len(bodies)} requests of {SPANS_PER_REQUEST}, {mb:.1f} MB, {CLIENTS} clients)")
    print(f"  OTLP/gRPC  {spans:>8} spans in {grpc_s:6.2f} s = {spans / grpc_s:>10,.0f} spans/s")
    print(f"  raw kafka-python, same {len(bodies)} messages: {raw_spans_s:6.2f} s = "
          f"{spans / raw_spans_s:>10,.0f} spans/s")
    print(f"  ratio to raw: HTTP {raw_spans_s / http_s:.2f}, gRPC {raw_spans_s / grpc_s:.2f}")
    print(f"  filelog    {len(lines):>8} lines in {lines_s:6.2f} s = {len(lines) / lines_s:>10,.0f} lines/s "
          f"({len(data) / 1e6:.1f} MB, NIM JSONL)")
    print(f"  raw kafka-python, same {len(batches)} nimlogs batches: {raw_lines_s:6.2f} s = "
          f"{len(lines) / raw_lines_s:>10,.0f} lines/s")
    print(f"  ratio to raw: filelog {raw_lines_s / lines_s:.2f}")


if __name__ == "__main__":
    main()
