"""Output Kafka refuses for good (a topic made with a smaller max.message.bytes) neither
stops the processor nor holds back what follows it, before and after a restart: batches
are split, what still cannot go goes to the dead-letter topic with the refusal as reason,
and the producer that the refusal stopped is replaced."""

from __future__ import annotations

import json
import random
import string
import urllib.request

from kafka.admin import KafkaAdminClient, NewTopic

from nimtrail import columnar
from tests.harness import Env, wait_for
from tests.hostile import agent_trace, post_traces
from tests.kafka_util import headers, read_all

TOPIC_LIMIT = 16 * 1024


def _calls(env: Env) -> dict[str, dict]:
    found = {}
    for message in read_all(env.config.kafka.bootstrap, env.config.topics.calls, expect=0, timeout=5):
        for record in columnar.records_of(message.value)[1]:
            found[record["call_id"]] = record
    return found


def _refused(env: Env) -> list:
    return [m for m in read_all(env.config.kafka.bootstrap, env.config.topics.dlq, expect=0, timeout=5)
            if headers(m)["nimtrail.reason"] == "output_refused"]


def _metric(env: Env, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{env.ports['ops']}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def _round(env: Env, tag: str) -> tuple[list[dict], dict]:
    """Ten ordinary traces and one whose kept prompt no message of the calls topic can hold."""
    sent = []
    for n in range(10):
        body, ids = agent_trace(n, tag=tag)
        assert post_traces(env.otlp_http, body) == 200
        sent.append(ids)
    # Letters: compressed they still exceed the topic's limit, and redaction reads them fast.
    prompt = "".join(random.choices(string.ascii_letters + " ", k=80 * 1024))
    body, big = agent_trace(99, tag=tag, hostile={"gen_ai.input.messages": prompt})
    assert post_traces(env.otlp_http, body) == 200
    return sent, big


def test_refused_output_is_dead_lettered_and_the_rest_arrives_across_a_restart(tmp_path, kafka_bootstrap):
    env = Env(tmp_path, kafka_bootstrap, processor={"content": {"keep_prompts": True}})
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(env.config.topics.calls, 1, 1,
                                  topic_configs={"max.message.bytes": str(TOPIC_LIMIT)})])
    admin.close()
    try:
        processor = env.start("processor")
        env.start("collector")
        env.wait_ready("processor")
        env.wait_ready("collector")

        sent, big = _round(env, "before")
        wait_for(lambda: {s["call_id"] for s in sent} <= _calls(env).keys(), timeout=60,
                 what="the ordinary calls on the calls topic")
        refused = wait_for(lambda: _refused(env), timeout=60, what="the refused call in the dead-letter topic")
        assert len(refused) == 1
        kind, batch = columnar.records_of(refused[0].value)
        assert kind == "model_call" and [r["call_id"] for r in batch] == [big["call_id"]]
        assert headers(refused[0])["nimtrail.stage"] == "processor"
        assert "MessageSizeTooLarge" in headers(refused[0])["nimtrail.detail"]
        assert _metric(env, "nimtrail_processor_replaced_producers_total") >= 1
        assert _metric(env, "nimtrail_processor_refused_messages_total") == 1
        assert big["call_id"] not in _calls(env)

        processor.terminate()
        assert processor.wait(timeout=60) == 0  # a clean stop, not a crash
        env.start("processor")
        env.wait_ready("processor")
        sent, big_after = _round(env, "after")
        wait_for(lambda: {s["call_id"] for s in sent} <= _calls(env).keys(), timeout=60,
                 what="the ordinary calls after the restart")
        refused = wait_for(lambda: len(_refused(env)) == 2 and _refused(env), timeout=60,
                           what="the second refused call in the dead-letter topic")
        assert json.loads(refused[1].value)["records"][0]["call_id"] == big_after["call_id"]
        assert "Traceback" not in env.log("processor")
    finally:
        env.stop_all()
