"""`nimtrail deployments` through the real broker: register, version, list, show, diff; no
secret anywhere; a bad file registers nothing."""

import json
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from tests.harness import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "deployments"
LLAMA = "prod/llama-3-1-8b"
SECRETS = ["nvapi-Qm9ndXNLZXlGb3JUZXN0c09ubHlfbm90LWEtcmVhbC1rZXktMDAx",
           "nvapi-U2VjcmV0VmFsdWVGb3JUZXN0c09ubHktbm90LXJlYWwtOTk5OTk5",
           "nvapi-VGVhbUFTZWNyZXRJblRoZU1hbmlmZXN0LW5vdC1yZWFsLTEyMzQ1Njc4",
           "s3cr3t-pa55"]


def raw_messages(env) -> list[tuple[bytes, bytes]]:
    """Every message physically on the deployments topic, aborted transactions included."""
    topic = env.config.topics.deployments
    consumer = KafkaConsumer(bootstrap_servers=env.config.kafka.bootstrap, group_id=None,
                             isolation_level="read_uncommitted", enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in wait_for(
            lambda: consumer.partitions_for_topic(topic), what="topic metadata")]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        out = []

        def drained():
            for messages in consumer.poll(timeout_ms=500).values():
                out.extend((m.key or b"", m.value or b"") for m in messages)
            return all(consumer.position(tp) >= ends[tp] for tp in partitions)

        wait_for(drained, timeout=30, what="the deployments topic to be read")
        return out
    finally:
        consumer.close()


def cli_json(env, *args):
    return json.loads(env.cli(*args, "--json").stdout)


def test_register_upgrade_diff_list_show_through_kafka(env, tmp_path):
    outputs = []

    def run(*args, check=True):
        result = env.cli("deployments", *args, check=check)
        outputs.extend([result.stdout, result.stderr])
        return result

    first = run("register", str(FIXTURES / "llama-values.yaml"), str(FIXTURES / "llama-governance.yaml"))
    assert first.stdout.strip() == f"{LLAMA}: registered version 1"

    upgrade = tmp_path / "llama-values.yaml"
    upgrade.write_text((FIXTURES / "llama-values.yaml").read_text().replace('tag: "1.3.3"', 'tag: "1.8.0"'))
    second = run("register", str(upgrade), "--deployment", LLAMA)
    assert second.stdout.strip() == f"{LLAMA}: registered version 2 (changed: nim_image)"

    again = run("register", str(upgrade), "--deployment", LLAMA, "--json")
    assert json.loads(again.stdout)["deployments"] == [
        {"deployment_id": LLAMA, "status": "unchanged", "version": 2,
         "valid_from": json.loads(run("show", LLAMA, "--json").stdout)["valid_from"],
         "changed_fields": []}]

    changes = json.loads(run("diff", LLAMA, "--json").stdout)
    assert (changes["from_version"], changes["to_version"]) == (1, 2)
    assert changes["changes"] == [{"field": "nim_image",
                                   "from": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3",
                                   "to": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0"}]
    text = run("diff", LLAMA, "--from", "1", "--to", "2").stdout.splitlines()
    assert text[1:] == ["  nim_image: nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3 → "
                        "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0"]

    # What the upgraded container reports about itself, saved from /v1/metadata, and its log.
    metadata = tmp_path / "metadata.json"
    metadata.write_text((FIXTURES / "metadata.json").read_text().replace('"version": "1.3.3"',
                                                                        '"version": "1.8.0"'))
    observed = run("register", str(metadata), str(FIXTURES / "startup-trtllm.log"), "--deployment", LLAMA)
    assert observed.stdout.strip() == (f"{LLAMA}: registered version 3 "
                                       "(changed: nim_release, model_source, profile_id, gpu_device)")

    manifests = run("register", str(FIXTURES / "multi-manifests.yaml"), str(FIXTURES / "nimservice.yaml"))
    assert manifests.stdout.splitlines() == ["research/nemotron-nano-8b: registered version 1",
                                             "team-a/mistral-7b: registered version 1",
                                             "team-a/qwen-72b: registered version 1"]

    listed = json.loads(run("list", "--json").stdout)["rows"]
    assert [(r["deployment_id"], r["version"]) for r in listed] == [
        (LLAMA, 3), ("research/nemotron-nano-8b", 1), ("team-a/mistral-7b", 1), ("team-a/qwen-72b", 1)]
    table = run("list").stdout
    assert "tensorrt_llm" in table and "sglang" in table and "L40S" in table

    v1 = json.loads(run("show", LLAMA, "--version", "1", "--json").stdout)
    assert v1["nim_image"].endswith(":1.3.3") and v1["profile_id"] is None
    assert v1["purpose"].startswith("Customer-support") and v1["tool_calling"]["parser"] == "llama3_json"
    shown = run("show", LLAMA).stdout
    assert shown.splitlines()[0].startswith(f"{LLAMA} version 3 (valid from ")
    assert "  profile_id            8af967d80ae8f30f" in shown and "[redacted sha256:" in shown

    missing = run("show", "prod/nope", check=False)
    assert missing.returncode == 2 and "no deployment 'prod/nope' is registered" in missing.stderr

    # Keys and values on the topic: one message per version, keyed <id>@<version>.
    messages = raw_messages(env)
    keys = sorted(k.decode() for k, _ in messages)
    assert keys == [f"{LLAMA}@1", f"{LLAMA}@2", f"{LLAMA}@3", "research/nemotron-nano-8b@1",
                    "team-a/mistral-7b@1", "team-a/qwen-72b@1"]
    everything = b"".join(k + v for k, v in messages).decode() + "".join(outputs)
    for secret in SECRETS:
        assert secret not in everything
    assert "[redacted sha256:" in everything

    # The topic is compacted, so every version survives as long as the topic does.
    admin = KafkaAdminClient(bootstrap_servers=env.config.kafka.bootstrap)
    try:
        topic = env.config.topics.deployments
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        assert described["topic"][topic]["cleanup.policy"]["value"] == "compact"
    finally:
        admin.close()


def test_one_bad_file_registers_nothing_and_says_where(env):
    result = env.cli("deployments", "register", str(FIXTURES / "multi-manifests.yaml"),
                     str(FIXTURES / "nimservice.yaml"), str(FIXTURES / "bad-syntax.yaml"), check=False)
    assert result.returncode == 2
    error = result.stderr.strip()
    assert error.startswith(f"nimtrail: error: {FIXTURES / 'bad-syntax.yaml'}: line 7, column 4: not valid YAML")
    assert "expected a YAML or JSON document" in error
    for secret in SECRETS:  # the bad line holds a key; the message must not quote it
        assert secret not in result.stdout + result.stderr

    result = env.cli("deployments", "register", str(FIXTURES / "llama-values.yaml"),
                     str(FIXTURES / "bad-unquoted-tag.yaml"), "--deployment", LLAMA, check=False)
    assert result.returncode == 2
    assert "bad-unquoted-tag.yaml: line 3, key image.tag: got a number" in result.stderr

    result = env.cli("deployments", "register", str(FIXTURES / "llama-values.yaml"), check=False)
    assert result.returncode == 2 and "--deployment ID" in result.stderr

    assert cli_json(env, "deployments", "list") == {"rows": []}
    assert raw_messages(env) == []


def test_a_concurrent_registration_is_fenced_instead_of_writing_the_same_version(env):
    from nimtrail import records
    from nimtrail.deployments import group, plan, topic

    config = env.config
    topic.ensure(config)
    groups = group([FIXTURES / "llama-values.yaml", FIXTURES / "llama-governance.yaml"])
    first, second = topic.Writer(config).open(), topic.Writer(config)
    try:
        decided = plan(groups, topic.read_all(config), now=records.now_iso())
        second.open()  # another registration starts while the first is still deciding
        decided_again = plan(groups, topic.read_all(config), now=records.now_iso())
        second.publish([o.record for o in decided_again])
        try:
            first.publish([o.record for o in decided])
        except topic.ConcurrentRegistration as e:
            assert "run the command again" in str(e)
        else:
            raise AssertionError("the fenced registration wrote anyway")
    finally:
        first.close()
        second.close()
    versions = [(r["deployment_id"], r["version"]) for r in topic.read_all(config)]
    assert versions == [(LLAMA, 1)]
