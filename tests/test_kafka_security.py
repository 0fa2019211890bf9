"""Kafka over TLS with SASL (SCRAM-SHA-512 and PLAIN): every stage's clients pass the
settings through; a wrong password is a clear, immediate error."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from cli import broker
from tests.harness import Env, wait_for
from tests.otel_agent import send_agent_trace

PASSWORD = "s3cret-scram-password"


def _keystore(tmp):
    """A broker certificate for 127.0.0.1, made with the JDK's keytool, and its PEM."""
    store, pem = tmp / "broker.p12", tmp / "ca.pem"
    subprocess.run(["keytool", "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
                    "-validity", "2", "-dname", "CN=localhost", "-ext", "SAN=ip:127.0.0.1,dns:localhost",
                    "-keystore", str(store), "-storetype", "PKCS12", "-storepass", "changeit",
                    "-keypass", "changeit"], check=True, capture_output=True)
    subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "broker", "-keystore", str(store),
                    "-storepass", "changeit", "-file", str(pem)], check=True, capture_output=True)
    return store, pem


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure-kafka")
    store, pem = _keystore(tmp)
    port, secure, controller = broker.free_port(), broker.free_port(), broker.free_port()
    extra = {
        "listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure},"
                     f"CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.plain.sasl.jaas.config":
            'org.apache.kafka.common.security.plain.PlainLoginModule required user_bob="bob-password";',
        "ssl.keystore.location": str(store), "ssl.keystore.password": "changeit",
        "ssl.key.password": "changeit", "ssl.keystore.type": "PKCS12",
    }
    broker.start(tmp, port=port, controller_port=controller, extra_properties=extra,
                 scram_users={"nimtrail": PASSWORD}, timeout=180)
    yield {"bootstrap": f"127.0.0.1:{secure}", "cafile": str(pem), "dir": tmp}
    broker.stop(tmp)


def _secure_env(tmp_path, secure_broker, *, mechanism="SCRAM-SHA-512", user="nimtrail",
                password=PASSWORD) -> Env:
    secret = tmp_path / "kafka-password"
    secret.write_text(password + "\n")
    return Env(tmp_path, secure_broker["bootstrap"], kafka={
        "security_protocol": "SASL_SSL", "ssl_cafile": secure_broker["cafile"],
        "sasl_mechanism": mechanism, "sasl_username": user, "sasl_password_file": str(secret)})


def test_pipeline_runs_over_tls_with_scram(tmp_path, secure_broker):
    env = _secure_env(tmp_path, secure_broker)
    try:
        for stage in ("warehouse", "processor", "collector"):
            env.start(stage)
        for stage in ("warehouse", "processor", "collector"):
            env.wait_ready(stage, timeout=90)
        sent = send_agent_trace(env.otlp_http, caller="carol")

        def traced():
            out = env.cli("trace-back", "--tool-call-id", sent["tool_call_id"], "--json", check=False)
            doc = json.loads(out.stdout) if out.stdout.strip() else {}
            return doc.get("call") and doc["actions"] and doc["actions"][0]["call_id"] and doc

        doc = wait_for(traced, timeout=60, what="the trace over SASL_SSL")
        assert doc["caller"]["caller"] == "carol"
        # The password never shows in the config nimtrail prints back.
        shown = env.cli("check", "--show").stdout
        assert PASSWORD not in shown and yaml.safe_load(shown.split("\n", 1)[1])["kafka"]["sasl_password"] == ""
    finally:
        env.stop_all()


def test_plain_mechanism_is_passed_through(tmp_path, secure_broker):
    from nimtrail import kafka_io

    env = _secure_env(tmp_path, secure_broker, mechanism="PLAIN", user="bob", password="bob-password")
    kafka_io.ensure_topics(env.config, [env.config.topics.dlq], timeout=30)
    producer = kafka_io.producer(env.config)
    producer.send(env.config.topics.dlq, b"over PLAIN").get(timeout=30)
    producer.close()


def test_wrong_password_is_a_clear_error_not_a_hang(tmp_path, secure_broker):
    env = _secure_env(tmp_path, secure_broker, password="not-the-password")
    started = time.monotonic()
    process = env.start("collector")
    assert process.wait(timeout=60) == 2
    log = env.log("collector")
    assert "refused the connection for user 'nimtrail' (SCRAM-SHA-512)" in log
    assert "Traceback" not in log
    assert time.monotonic() - started < 60
