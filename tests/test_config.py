"""Configuration: one YAML file, environment overrides, errors that name the key."""

import os
import subprocess
import sys

import pytest

from nimtrail import config, kafka_io
from cli.main import main
from nimtrail.errors import ConfigError
from tests.harness import REPO


def test_defaults_match_the_public_surface():
    c = config.load(env={})
    assert c.kafka.bootstrap == ""
    assert c.collector.otlp_grpc.port == 4317 and c.collector.otlp_http.port == 4318
    assert c.warehouse.api.port == 8700 and c.app.port == 8501
    assert c.warehouse_path.name == "audit.duckdb"
    assert c.topics.calls == "nimtrail.audit.calls" and c.topics.dlq == "nimtrail.dlq"


def test_environment_overrides_nested_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  bootstrap: broker-a:9092\nwarehouse:\n  api: 127.0.0.1:8700\n")
    c = config.load(path, env={"NIMTRAIL_KAFKA__BOOTSTRAP": "broker-b:9092",
                               "NIMTRAIL_WAREHOUSE__API": "0.0.0.0:9000",
                               "NIMTRAIL_PROCESSOR__JOIN_WINDOW": "2m"})
    assert c.kafka.bootstrap == "broker-b:9092"
    assert c.warehouse.api.port == 9000
    assert c.processor.join_window == 120


def test_config_file_from_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: /srv/nimtrail\n")
    assert config.load(env={"NIMTRAIL_CONFIG": str(path)}).data_dir == "/srv/nimtrail"


@pytest.mark.parametrize("text, message", [
    ("kafka:\n  bootsrap: x\n", "kafka.bootsrap: unknown key"),
    ("kafka:\n  port: nine\n", "kafka.port: expected an integer, got 'nine'"),
    ("collector:\n  otlp_http: 4318\n", "collector.otlp_http: expected host:port"),
    ("collector:\n  scrape:\n    - {url: 'http://a', interval: soon}\n",
     "collector.scrape[0].interval: expected a duration"),
    ("collector:\n  filelog:\n    - {deployment: x}\n", "collector.filelog[0].include"),
    ("collector:\n  filelog: /var/log\n", "collector.filelog: expected a list"),
    ("- just\n- a list\n", "expected a mapping at the top level"),
    ("kafka: [unclosed\n", "not valid YAML"),
    ("warehouse:\n  trusted_proxies: 10.0.0.0/8\n", "warehouse.trusted_proxies: expected a list"),
    ("warehouse:\n  trusted_proxies: [10.0.0.300/8]\n",
     "warehouse.trusted_proxies[0]: expected an IP address or CIDR, got '10.0.0.300/8'"),
    ("warehouse:\n  person_headers: []\n", "warehouse.person_headers: expected at least one header name"),
    ("warehouse:\n  person_headers: ['X Email']\n", "warehouse.person_headers[0]: 'X Email' is not an HTTP header"),
    ("app:\n  trusted_proxy: yes please\n", "app.trusted_proxy: expected true or false"),
    ("app:\n  address: 0.0.0.0\n  trusted_proxy: true\n", "app.trusted_proxy: needs app.address on loopback"),
    ("warehouse:\n  memory_limit: lots\n", "warehouse.memory_limit: expected a size such as 256MB, got 'lots'"),
    ("warehouse:\n  memory_limit: 256 parsecs\n", "warehouse.memory_limit: expected a size"),
    ("warehouse:\n  memory_limit: true\n", "warehouse.memory_limit: expected a size"),
    ("warehouse:\n  memory_limit: 64MB\n", "warehouse.memory_limit: expected at least 128MB"),
    ("warehouse:\n  threads: two\n", "warehouse.threads: expected an integer, got 'two'"),
    ("warehouse:\n  threads: 0\n", "warehouse.threads: expected between 1 and 256"),
    ("warehouse:\n  batch_wait: soon\n", "warehouse.batch_wait: expected a duration"),
    ("processor:\n  batch_wait: 2m\n", "processor.batch_wait: expected between 0s and 1s, got 120s"),
    ("processor:\n  session_timeout: 0s\n", "processor.session_timeout: expected 1s to 1h"),
    ("processor:\n  session_timeout: soon\n", "processor.session_timeout: expected a duration"),
    ("warehouse:\n  shards: two\n", "warehouse.shards: expected an integer, got 'two'"),
    ("warehouse:\n  shards: 0\n", "warehouse.shards: expected between 1 and 64, got 0"),
    ("warehouse:\n  shards: 2\n  shard: 2\n", "warehouse.shard: expected between 0 and shards - 1 (1), got 2"),
    ("warehouse:\n  shard_api: warehouse-{shard}\n", "warehouse.shard_api: expected host:port with {shard}"),
])
def test_invalid_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path, env={})
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_warehouse_memory_limit_reads_sizes_as_duckdb_does(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warehouse:\n  memory_limit: 1GiB\n  threads: 1\n")
    c = config.load(path, env={"NIMTRAIL_WAREHOUSE__THREADS": "3"})
    assert c.warehouse.memory_limit == 1024 ** 3 and c.warehouse.threads == 3
    c = config.load(path, env={"NIMTRAIL_WAREHOUSE__MEMORY_LIMIT": "300MB"})
    assert c.warehouse.memory_limit == 300 * 1000 ** 2
    assert config.as_dict(c)["warehouse"]["memory_limit"] == 300 * 1000 ** 2


def test_wrong_type_in_environment_names_the_variable_key():
    with pytest.raises(ConfigError, match=r"kafka.partitions: expected an integer"):
        config.load(env={"NIMTRAIL_KAFKA__PARTITIONS": "many"})


def test_environment_variable_naming_no_key_is_a_warning_not_a_refusal(caplog):
    # Other programs share the environment: a wrapper's own NIMTRAIL_ variable must not stop
    # every command, while a wrong type in a known key still does.
    with caplog.at_level("WARNING", logger="nimtrail.config"):
        c = config.load(env={"NIMTRAIL_KAFKA__TYPO": "1", "NIMTRAIL_WRAPPER_VERSION": "3",
                             "NIMTRAIL_KAFKA__PARTITIONS": "4"})
    assert c.kafka.partitions == 4
    assert "NIMTRAIL_KAFKA__TYPO names no configuration key" in caplog.text
    assert "NIMTRAIL_WRAPPER_VERSION names no configuration key" in caplog.text


def test_check_command_validates_without_network(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("kafka:\n  bootstrap: unreachable.invalid:9092\n")
    assert main(["--config", str(good), "check"]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("warehouse:\n  api: nowhere\n")
    assert main(["--config", str(bad), "check"]) == 2
    assert "warehouse.api: expected host:port" in capsys.readouterr().err


def test_batch_wait_becomes_the_consumers_fetch_wait():
    assert kafka_io.batching(0) == {}
    assert kafka_io.batching(0.1) == {"fetch_min_bytes": kafka_io.BATCH_BYTES, "fetch_max_wait_ms": 100}


def test_a_shard_flag_outside_the_layout_is_refused_before_anything_starts(tmp_path):
    path = tmp_path / "nimtrail.yaml"
    path.write_text("warehouse:\n  shards: 2\n")
    result = subprocess.run([sys.executable, "-m", "nimtrail", "--config", str(path), "warehouse", "--shard", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")})
    assert result.returncode != 0
    assert "--shard 3: expected between 0 and 1 (warehouse.shards is 2)" in result.stderr
