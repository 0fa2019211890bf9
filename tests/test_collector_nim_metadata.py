"""Polling a NIM's management API (an HTTP stub speaking NIM's shapes): an observation on
the first poll and on every change, none while nothing changes."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from tests.collector_support import TopicReader, headers, running
from tests.harness import Env, wait_for

PROFILE = "a" * 64


class NimStub:
    """What a NIM answers on its management endpoints; tests change it while it runs."""

    def __init__(self):
        self.metadata: bytes = orjson.dumps({
            "version": "1.8.0", "selectedModelProfileId": PROFILE,
            "modelInfo": [{"modelUrl": "ngc://nim/meta/llama-3.1-8b-instruct:hf", "shortName": "llama"}],
            "licenseInfo": {"type": "NVIDIA AI Enterprise"}})
        self.version = {"release": "1.8.0", "api": "1.0.0"}
        self.ready = True
        self.requests: dict[str, int] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                stub.requests[self.path] = stub.requests.get(self.path, 0) + 1
                status, body = 404, b'{"detail": "Not Found"}'
                if self.path == "/v1/metadata":
                    status, body = 200, stub.metadata
                elif self.path == "/v1/version":
                    status, body = 200, orjson.dumps(stub.version)
                elif self.path == "/v1/models":
                    # `created` changes on every request, as vLLM's does.
                    status, body = 200, orjson.dumps({"object": "list", "data": [
                        {"id": "meta/llama-3.1-8b-instruct", "object": "model", "created": time.time_ns(),
                         "owned_by": "system"}]})
                elif self.path == "/v1/health/ready":
                    status = 200 if stub.ready else 503
                    body = orjson.dumps({"object": "health.response", "message": "ready" if stub.ready
                                         else "Service is not ready", "status": "ready" if stub.ready else "starting"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def nim():
    stub = NimStub()
    yield stub
    stub.server.shutdown()


def test_observations_on_first_poll_and_on_change_only(tmp_path, kafka_bootstrap, nim):
    env = Env(tmp_path, kafka_bootstrap, collector={"nim_metadata": [
        {"url": nim.url, "deployment": "prod/llama-3-1-8b", "interval": "100ms", "timeout": "100ms"}]})
    observations = TopicReader(kafka_bootstrap, env.config.topics.observations)
    dlq = TopicReader(kafka_bootstrap, env.config.topics.dlq)
    with running(env):
        first = observations.wait(lambda ms: ms, what="the first observation")[0]
        # Nothing changes over several polls (a model's `created` does, and does not count).
        polls = nim.requests.get("/v1/metadata", 0)
        wait_for(lambda: nim.requests.get("/v1/metadata", 0) >= polls + 5, what="five more polls")
        assert len(observations.poll()) == 1

        nim.version = {"release": "1.9.0", "api": "1.0.0"}  # an upgrade
        observations.wait(lambda ms: len(ms) == 2, what="the observation of the upgrade")
        nim.ready = False
        observations.wait(lambda ms: len(ms) == 3, what="the observation of not being ready")
        nim.metadata = b"<html>proxy error</html>"
        letter = dlq.wait(lambda ms: next((m for m in ms if headers(m)["nimtrail.reason"] == "not_json"), None),
                          what="the non-JSON metadata in the DLQ")
        observations.wait(lambda ms: len(ms) == 4, what="the observation without metadata")

    assert first.key == b"prod/llama-3-1-8b"
    doc = orjson.loads(first.value)
    assert doc["schema"] == 1 and doc["deployment"] == "prod/llama-3-1-8b" and doc["source"] == "nim-metadata"
    assert doc["endpoint"] == nim.url and doc["observed_at"].endswith("Z")
    facts = doc["facts"]
    assert facts["metadata"]["selectedModelProfileId"] == PROFILE
    assert facts["version"] == {"release": "1.8.0", "api": "1.0.0"}
    assert facts["models"]["data"][0]["id"] == "meta/llama-3.1-8b-instruct"
    assert facts["ready"] is True
    later = [orjson.loads(m.value)["facts"] for m in observations.poll()[1:]]
    assert later[0]["version"]["release"] == "1.9.0" and later[0]["ready"] is True
    assert later[1]["ready"] is False
    assert "metadata" not in later[2] and later[2]["version"]["release"] == "1.9.0"
    assert letter.value == b"<html>proxy error</html>"
    observations.close()
    dlq.close()
