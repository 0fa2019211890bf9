"""Bad input at the collector's front door: a clear error, the dead-letter topic, and the
collector keeps serving."""

import gzip
import urllib.request
from urllib.error import HTTPError

from tests.kafka_util import headers, read_all
from tests.otel_agent import send_agent_trace


def post(url, body, content_type="application/x-protobuf", encoding=None):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    if encoding:
        request.add_header("Content-Encoding", encoding)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except HTTPError as e:
        return e.code, e.read()


def test_malformed_and_oversized_bodies_are_refused_and_dead_lettered(env, kafka_bootstrap):
    env.config = env.config  # default max body: 16 MiB
    env.start("collector")
    env.wait_ready("collector")
    url = f"{env.otlp_http}/v1/traces"

    status, body = post(url, b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert status == 400
    assert b"not an OTLP traces request" in body

    status, _ = post(url, b'{"resourceSpans": [', content_type="application/json")
    assert status == 400

    status, body = post(url, b"x" * (17 * 1024 * 1024))
    assert status == 413
    assert b"exceeds the limit" in body

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    status, _ = post(url, bomb, encoding="gzip")
    assert status == 413

    dead = read_all(kafka_bootstrap, env.config.topics.dlq, expect=4)
    reasons = [headers(m)["nimtrail.reason"] for m in dead]
    assert reasons.count("malformed_protobuf") == 1
    assert reasons.count("malformed_json") == 1
    assert reasons.count("body_too_large") == 2
    garbage = next(m for m in dead if headers(m)["nimtrail.reason"] == "malformed_protobuf")
    assert garbage.value == b"\x0a\xff\xff\xff\xff\x0f garbage"  # kept untouched for replay
    assert headers(garbage)["nimtrail.stage"] == "collector"

    # Still serving: a real exporter's request is accepted and forwarded.
    send_agent_trace(env.otlp_http)
    spans = read_all(kafka_bootstrap, env.config.topics.otlp_spans, expect=1)
    assert spans
