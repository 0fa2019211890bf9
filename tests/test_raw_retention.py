"""The raw topics that carry content get the retention the content policy asks for, read
back from the real broker's topic configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimtrail import config as config_mod, kafka_io
from nimtrail.errors import ConfigError
from tests.harness import Env

pytestmark = pytest.mark.integration


def _topic_configs(env: Env, names: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """topic -> config key -> (value, where it comes from)."""
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = kafka_io.admin_client(env.config)
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, ["retention.ms", "segment.ms"]) for n in names],
            config_filter="all")["topic"]
    finally:
        admin.close()
    return {n: {k: (v["value"], v["config_source"]) for k, v in found[n].items()} for n in names}


def _raw(env: Env) -> list[str]:
    t = env.config.topics
    return [t.otlp_spans, t.otlp_logs, t.nimlogs]


def test_raw_content_topics_keep_a_day_while_no_content_is_kept(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap)
    t = env.config.topics
    kafka_io.ensure_topics(env.config, [*_raw(env), t.scrapes])
    found = _topic_configs(env, [*_raw(env), t.scrapes])
    for name in _raw(env):
        assert found[name]["retention.ms"] == ("86400000", "DYNAMIC_TOPIC_CONFIG")
        assert found[name]["segment.ms"] == ("3600000", "DYNAMIC_TOPIC_CONFIG")  # segments roll hourly
    assert found[t.scrapes]["retention.ms"][1] != "DYNAMIC_TOPIC_CONFIG"  # no content there


def test_keeping_content_leaves_the_raw_topics_to_the_broker(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, processor={"content": {"keep_arguments": True}})
    kafka_io.ensure_topics(env.config, _raw(env))
    for name, configs in _topic_configs(env, _raw(env)).items():
        assert configs["retention.ms"][1] != "DYNAMIC_TOPIC_CONFIG", name


def test_an_explicit_retention_is_applied_to_topics_that_already_exist(tmp_path: Path, kafka_bootstrap: str):
    before = Env(tmp_path, kafka_bootstrap, processor={"content": {"raw_retention": "broker"}})
    kafka_io.ensure_topics(before.config, _raw(before))
    assert all(c["retention.ms"][1] != "DYNAMIC_TOPIC_CONFIG" for c in _topic_configs(before, _raw(before)).values())
    # The same topics, started again with a retention configured.
    (tmp_path / "again").mkdir()
    after = Env(tmp_path / "again", kafka_bootstrap, topics=config_mod.as_dict(before.config)["topics"],
                processor={"content": {"keep_prompts": True, "raw_retention": "2h"}})
    kafka_io.ensure_topics(after.config, _raw(after))
    for name, configs in _topic_configs(after, _raw(after)).items():
        assert configs["retention.ms"] == ("7200000", "DYNAMIC_TOPIC_CONFIG"), name
        assert configs["segment.ms"] == ("3600000", "DYNAMIC_TOPIC_CONFIG"), name


@pytest.mark.parametrize("value, message", [
    ({"raw_retention": "soon"}, "processor.content.raw_retention: expected auto, broker or a duration"),
    ({"raw_retention": "10s"}, "processor.content.raw_retention: expected at least 1m"),
    ({"max_text_bytes": 10}, "processor.content.max_text_bytes: expected between 1024 and 16777216"),
])
def test_bad_content_settings_name_their_key(value, message):
    with pytest.raises(ConfigError, match=message):
        config_mod.load(None, env={f"NIMTRAIL_PROCESSOR__CONTENT__{k.upper()}": str(v) for k, v in value.items()})
