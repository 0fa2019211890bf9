"""POST /v1/nimlogs as Fluent Bit and Vector send it: each request becomes one nimlogs
batch with the container's lines unwrapped; bad bodies are refused and dead-lettered."""

from __future__ import annotations

import gzip
import http.client
import uuid

import orjson
import pytest

from collector.http_logs import parse
from tests.collector_support import TopicReader, headers, reasons, running
from tests.harness import Env

MAX_LINE = 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory, kafka_bootstrap):
    env = Env(tmp_path_factory.mktemp("httplogs"), kafka_bootstrap, collector={"max_line_bytes": MAX_LINE})
    with running(env):
        t = env.config.topics
        nimlogs, dlq = TopicReader(kafka_bootstrap, t.nimlogs), TopicReader(kafka_bootstrap, t.dlq)
        yield env, nimlogs, dlq
        nimlogs.close()
        dlq.close()


def _post(env: Env, path: str, body: bytes, content_type: str, **extra: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **extra})
        response = conn.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        conn.close()


def _batch(nimlogs: TopicReader, marker: str) -> dict:
    return nimlogs.wait(lambda _: next((d for d in nimlogs.docs()
                                        if any(marker in line["text"] for line in d["lines"])), None),
                        what=f"the batch holding {marker}")


def test_fluent_bit_json_lines_become_one_batch(world):
    env, nimlogs, _dlq = world
    tag = uuid.uuid4().hex[:8]
    nim_line = orjson.dumps({"level": "INFO", "time": "2026-03-03 12:00:10", "file_name": "start_server.py",
                             "line_number": 42, "message": f"Serving {tag}"}).decode()
    records = [
        {"date": 1772539210.5, "log": nim_line + "\n", "stream": "stderr", "time": "2026-03-03T12:00:10.5Z"},
        {"date": 1772539211.0, "log": f"INFO 03-03 12:00:11 model_runner.py:173] Loading {tag}\n",
         "stream": "stdout", "kubernetes": {"pod_name": "llama-0"}},
    ]
    body = b"\n".join(orjson.dumps(r) for r in records)
    status, answer = _post(env, "/v1/nimlogs?source=prod/llama-3-1-8b", body, "application/x-ndjson")
    assert (status, answer) == (200, {"accepted": 2})
    doc = _batch(nimlogs, f"Serving {tag}")
    assert doc["receiver"] == "http" and doc["source"] == "prod/llama-3-1-8b"
    assert doc["deployment"] == "prod/llama-3-1-8b" and doc["file"] is None
    assert doc["lines"][0] == {"text": nim_line, "offset": None, "time": "2026-03-03T12:00:10.5Z", "stream": "stderr"}
    assert doc["lines"][1]["text"] == f"INFO 03-03 12:00:11 model_runner.py:173] Loading {tag}"
    assert doc["lines"][1]["time"].startswith("2026-03-03T12:00:11")  # Fluent Bit's epoch `date`
    assert len(doc["lines"]) == 2  # one request, one batch


def test_vector_json_array_and_plain_text(world):
    env, nimlogs, _dlq = world
    tag = uuid.uuid4().hex[:8]
    events = [{"message": f"Finished request {tag}.", "source_type": "kubernetes_logs", "stream": "stderr",
               "timestamp": "2026-03-03T12:00:12Z"},
              {"level": "INFO", "message": f"NIM JSONL {tag}"}]
    status, answer = _post(env, "/v1/nimlogs", orjson.dumps(events), "application/json",
                           **{"X-Nimtrail-Source": "prod/mistral"})
    assert (status, answer) == (200, {"accepted": 2})
    doc = _batch(nimlogs, f"Finished request {tag}.")
    assert doc["source"] == "prod/mistral"
    assert doc["lines"][0]["stream"] == "stderr" and doc["lines"][0]["time"] == "2026-03-03T12:00:12Z"
    assert orjson.loads(doc["lines"][1]["text"]) == events[1]

    text = f"2026-02-20 21:46:26,645 [WARNING] [TRT-LLM] [W] {tag}\r\n{{not json {tag}\n\n".encode()
    status, answer = _post(env, "/v1/nimlogs?source=edge", text, "text/plain")
    assert (status, answer) == (200, {"accepted": 2})
    doc = _batch(nimlogs, f"[TRT-LLM] [W] {tag}")
    assert [line["text"] for line in doc["lines"]] == [f"2026-02-20 21:46:26,645 [WARNING] [TRT-LLM] [W] {tag}",
                                                       f"{{not json {tag}"]


def test_long_line_is_cut_and_the_rest_dead_lettered(world):
    env, nimlogs, dlq = world
    tag = uuid.uuid4().hex[:8]
    line = f"{tag} " + "é" * MAX_LINE  # two bytes a character: the cut must not split one
    status, _ = _post(env, "/v1/nimlogs?source=big", line.encode(), "text/plain")
    assert status == 200
    doc = _batch(nimlogs, tag)
    kept = doc["lines"][0]["text"]
    assert line.startswith(kept) and MAX_LINE - 1 <= len(kept.encode()) <= MAX_LINE
    letter = dlq.wait(lambda ms: next((m for m in ms if headers(m)["nimtrail.reason"] == "line_too_long"
                                       and m.key == b"big"), None), what="the rest of the line")
    assert kept.encode() + letter.value == line.encode()  # nothing lost


@pytest.mark.parametrize("body,ctype,status,reason", [
    (b"\xff\xfe binary \x00\x81", "text/plain", 400, "invalid_utf8"),
    (b'[{"log": "unterminated', "application/json", 400, "malformed_json"),
    (b"\x00\x01", "application/x-protobuf", 415, "unsupported_content_type"),
])
def test_bad_body_is_refused_and_dead_lettered(world, body, ctype, status, reason):
    env, nimlogs, dlq = world
    before = reasons(dlq).count(reason)
    got, answer = _post(env, "/v1/nimlogs?source=bad", body, ctype)
    assert got == status and answer["message"]
    dlq.wait(lambda _: reasons(dlq).count(reason) > before, what=f"a dead letter with reason {reason}")
    tag = uuid.uuid4().hex[:8]
    assert _post(env, "/v1/nimlogs?source=ok", f"still here {tag}\n".encode(), "text/plain")[0] == 200
    _batch(nimlogs, f"still here {tag}")


def test_parse_keeps_unknown_objects_as_the_line():
    lines = parse('{"a": 1}\n{"log": "x\\n", "stream": "stdout"}\nplain', as_array=False)
    assert lines == [('{"a": 1}', None, None), ("x", None, "stdout"), ("plain", None, None)]


def test_every_member_of_a_multi_member_gzip_body_is_forwarded(world):
    env, nimlogs, _dlq = world
    tag = uuid.uuid4().hex[:8]
    members = [gzip.compress(f"line {tag} {i}a\nline {tag} {i}b\n".encode()) for i in range(3)]
    status, answer = _post(env, "/v1/nimlogs?source=prod/gzip", b"".join(members), "text/plain",
                           **{"Content-Encoding": "gzip"})
    assert (status, answer) == (200, {"accepted": 6})
    doc = _batch(nimlogs, f"line {tag} 0a")
    assert [line["text"] for line in doc["lines"]] == [f"line {tag} {i}{h}" for i in range(3) for h in "ab"]
