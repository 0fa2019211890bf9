"""The shipped deployment files agree with the code: commands and flags exist, ports match
the config defaults, embedded configs validate, and no secret is inlined."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from nimtrail import config as config_mod
from cli.main import parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
SECRET_NAME = re.compile(r"(password|passwd|secret|token|api[_-]?key|credential)", re.I)
DEFAULTS = config_mod.Config()
STAGE_PORTS = {"collector": {DEFAULTS.collector.otlp_grpc.port, DEFAULTS.collector.otlp_http.port},
               "processor": {DEFAULTS.processor.ops.port}, "warehouse": {DEFAULTS.warehouse.api.port},
               "app": {DEFAULTS.app.port}}


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _documents(p)]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def _cli_accepts(args: list[str]) -> None:
    """Parse args as the CLI would, without running anything."""
    try:
        parser().parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"nimtrail does not accept {args}") from e


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_container_command_exists_in_the_cli():
    seen = set()
    for doc in _k8s_docs():
        for container in _containers(doc):
            if container["image"].startswith("ghcr.io/nimtrail/"):
                _cli_accepts(container["args"])
                seen.add(container["args"][0])
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if "command" in service and name != "kafka":
            _cli_accepts(service["command"])
            seen.add(service["command"][0])
    for unit in (DEPLOY / "systemd").glob("*.service"):
        exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
        _cli_accepts(exec_start.split()[1:])
    assert seen == {"collector", "processor", "warehouse", "app"}


def test_container_ports_match_config_defaults():
    for doc in _k8s_docs():
        for container in _containers(doc):
            ports = {p["containerPort"] for p in container.get("ports", [])}
            stage = container["args"][0]
            if ports:
                assert ports <= STAGE_PORTS[stage], (stage, ports)
        if doc["kind"] == "Service":
            stage = doc["spec"]["selector"]["app.kubernetes.io/component"]
            assert {p["port"] for p in doc["spec"]["ports"]} <= STAGE_PORTS[stage]


@pytest.mark.parametrize("name", ["nimtrail.yaml", "nimtrail-filelog.yaml"])
def test_embedded_configs_validate(tmp_path, name):
    configmap = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap")
    path = tmp_path / name
    path.write_text(configmap["data"][name])
    loaded = config_mod.load(path, env={})
    assert loaded.kafka.security_protocol == "SASL_SSL"
    assert loaded.kafka.sasl_password == ""  # the password comes from the mounted secret file


def test_compose_config_validates():
    config_mod.load(DEPLOY / "compose" / "nimtrail.yaml", env={})


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_no_secret_value_is_inlined():
    files = [*K8S.glob("*.yaml"), *(DEPLOY / "compose").glob("*.yaml")]
    for path in files:
        for doc in _documents(path):
            assert doc.get("kind") != "Secret", f"{path.name} must reference a Secret, not define one"
            docs = [doc] + [yaml.safe_load(v) for v in (doc.get("data") or {}).values()
                            if isinstance(v, str) and ":" in v]
            for d in docs:
                for where, value in _walk(d):
                    if ".secrets" in where:
                        continue  # compose secret references: names and files, never values
                    key = where.rsplit(".", 1)[-1]
                    if (SECRET_NAME.search(key) and not key.endswith(("_file", "_FILE", "Name", "secretName"))
                            and not isinstance(value, bool)):  # automountServiceAccountToken: false
                        assert value in ("", None), f"{path.name}{where} inlines a secret"
            for container in _containers(doc):
                for var in container.get("env", []):
                    if SECRET_NAME.search(var["name"]) and not var["name"].endswith("_FILE"):
                        assert "valueFrom" in var, f"{path.name}: {var['name']} must come from a secret"


def test_cli_has_no_flag_that_takes_a_secret():
    def flags(p: argparse.ArgumentParser):
        for action in p._actions:
            yield from action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from flags(sub)

    assert not [f for f in flags(parser()) if SECRET_NAME.search(f)]


# ---- every file parses; RBAC; secrets mounted where the configs look; the deploy guide ----

DOCS = DEPLOY.parent / "docs"
SECRETS_DIR = "/etc/nimtrail/secrets/"
# The config sections each stage reads (the app only talks to the query API).
STAGE_SECTIONS = {"collector": ("kafka", "collector"), "processor": ("kafka", "processor"),
                  "warehouse": ("kafka", "warehouse"), "app": ("app",)}
CONFIG_SECTIONS = tuple(f.name for f in __import__("dataclasses").fields(config_mod.Config))


def test_every_manifest_parses_as_kubernetes_objects():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        docs = _documents(path)  # raises on a YAML error
        assert docs, f"{path.name} is empty"
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _documents(path):
            if path.name == "kustomization.yaml":
                continue
            assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), \
                f"{path.name}: not a Kubernetes object"
            if doc["kind"] not in ("Kustomization", "Namespace", "ClusterRole", "ClusterRoleBinding"):
                assert doc["metadata"].get("namespace") == "nimtrail", f"{path.name}: {doc['kind']} namespace"


def _by_kind(kind: str) -> list[dict]:
    return [d for d in _k8s_docs() if d["kind"] == kind]


def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def test_the_processor_runs_with_a_standby_each_pod_a_member_of_its_own():
    """One member reads the input, the other stands by (processors/membership.py): two replicas,
    a rolling update that never leaves none, and each pod its own static instance id (two
    pods with one id would fence each other out of the group)."""
    [processor] = [d for d in _k8s_docs() if d.get("metadata", {}).get("name") == "nimtrail-processor"
                   and d["kind"] == "Deployment"]
    assert processor["spec"]["replicas"] == 2
    assert processor["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    [container] = _pod_spec(processor)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NIMTRAIL_PROCESSOR__INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_only_the_collector_may_list_services():
    rules = {(r, v) for role in _by_kind("ClusterRole") + _by_kind("Role") for rule in role["rules"]
             for r in rule["resources"] for v in rule["verbs"] if "" in rule["apiGroups"]}
    assert {("services", "get"), ("services", "list"), ("services", "watch")} <= rules
    assert not [r for r in rules if r[0] in ("secrets", "pods/exec") or r[1] in ("create", "delete", "*")]
    bound = {s["name"] for b in _by_kind("ClusterRoleBinding") + _by_kind("RoleBinding") for s in b["subjects"]}
    workloads = {d["metadata"]["name"]: _pod_spec(d) for d in _k8s_docs()
                 if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")}
    assert bound == {workloads["nimtrail-collector"]["serviceAccountName"]}
    accounts = {a["metadata"]["name"]: a for a in _by_kind("ServiceAccount")}
    for name, spec in workloads.items():
        if spec["serviceAccountName"] not in bound:
            assert accounts[spec["serviceAccountName"]].get("automountServiceAccountToken") is False, name
    config = yaml.safe_load(_by_kind("ConfigMap")[0]["data"]["nimtrail.yaml"])
    assert config["collector"]["kubernetes_discovery"]["enabled"] is True


def _file_values(node, path=""):
    """(key path, value) of every config value that names a file."""
    for where, value in _walk(node, path):
        if where.endswith(("_file", "_cafile", "_certfile", "_keyfile")) and value:
            yield where, value


def test_every_secret_file_a_stage_reads_is_mounted_in_its_pod(tmp_path):
    configmap = _by_kind("ConfigMap")[0]
    used: set[str] = set()
    for doc in _k8s_docs():
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        spec = _pod_spec(doc)
        (container,) = spec["containers"]
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        config_key = env["NIMTRAIL_CONFIG"].rsplit("/", 1)[1]
        (tmp_path / config_key).write_text(configmap["data"][config_key])
        config = config_mod.as_dict(config_mod.load(tmp_path / config_key, env={}))
        sections = STAGE_SECTIONS[container["args"][0]]
        wanted = ({v for k, v in _file_values(config) if k.split(".")[1] in sections}
                  | {v for k, v in env.items() if k.endswith("_FILE")})
        wanted = {v[len(SECRETS_DIR):] for v in wanted if v.startswith(SECRETS_DIR)}
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec["volumes"]}
        provided = {item["path"] for name, path in mounts.items() if path.rstrip("/") + "/" == SECRETS_DIR
                    for item in volumes[name]["secret"].get("items", [])}
        assert wanted <= provided, f"{doc['metadata']['name']} reads {sorted(wanted - provided)} unmounted"
        assert provided <= wanted, f"{doc['metadata']['name']} mounts {sorted(provided - wanted)} it never reads"
        used |= wanted
    # ... and they are exactly the keys the guide has the operator put in the Secret.
    guide = (DOCS / "deploy.md").read_text()
    command = re.search(r"create secret generic nimtrail-secrets((?:.*\\\n)*.*)", guide).group(1)
    assert set(re.findall(r"--from-file=([\w.-]+)=", command)) == used


def _shell_lines(markdown: str) -> list[str]:
    """The lines of the ```sh blocks, continuation lines joined."""
    lines, block = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            block = line.strip() == "```sh" if not block else False
            continue
        if block:
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line)
    return lines


OPERATORS = ("|", "||", "&&", ";", "&", ">", ">>", "<", "2>", ")")


def _nimtrail_commands(markdown: str) -> list[list[str]]:
    """Each `nimtrail ...` invocation in the shell blocks: where a command starts (after
    VAR=value assignments; also a venv's bin/nimtrail), after `--` (`kubectl exec POD --`)
    or after `exec SERVICE` (`docker compose exec`). `nimtrail` as an argument (a namespace,
    a Secret's name) is not one."""
    import shlex

    found = []
    for line in _shell_lines(markdown):
        if line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        start = 0  # where the current simple command starts
        for i, word in enumerate(words):
            if word in OPERATORS or word == "(":
                start = i + 1
                continue
            if i == start and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
                start = i + 1
                continue
            command_word = (i == start or words[i - 1] == "--"
                            or (i >= 2 and words[i - 2] == "exec" and not words[i - 1].startswith("-")))
            if word.rsplit("/", 1)[-1] != "nimtrail" or not command_word:
                continue
            rest = []
            for w in words[i + 1:]:
                if w in OPERATORS:
                    break
                rest.append(w)
            found.append(rest)
    return found


def test_every_nimtrail_command_in_the_deploy_guide_exists():
    commands = _nimtrail_commands((DOCS / "deploy.md").read_text())
    for args in commands:
        _cli_accepts(args)
    names = {" ".join(a for a in args if not a.startswith("-"))[:20] for args in commands}
    assert len(commands) >= 8, commands
    assert any(args[:2] == ["deployments", "register"] and "--deployment" in args for args in commands)
    assert ["calls", "--limit", "10"] in commands, names


def test_the_scanner_finds_commands_where_the_guide_writes_them():
    text = ("```sh\nNIMTRAIL_TOKEN_FILE=t nimtrail calls --limit 3\n"
            "kubectl -n nimtrail exec pod -- nimtrail deployments list\n"
            "/opt/nimtrail/.venv/bin/nimtrail --config x check | tee out\n"
            "docker compose exec processor nimtrail findings\n"
            "kubectl -n nimtrail get pods\n```\n```\nnimtrail diagram ──►\n```\n")
    assert _nimtrail_commands(text) == [["calls", "--limit", "3"], ["deployments", "list"],
                                        ["--config", "x", "check"], ["findings"]]
    with pytest.raises(AssertionError):
        _cli_accepts(["calls", "--token", "x"])


def test_config_keys_and_variables_in_the_deploy_guide_exist():
    guide = (DOCS / "deploy.md").read_text()
    defaults = config_mod.as_dict(config_mod.Config())
    keys = [k for k in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", guide)
            if k.split(".")[0] in CONFIG_SECTIONS and not k.endswith((".pem", ".md", ".yaml", ".py"))]
    assert "collector.auth.tokens_file" in keys and "warehouse.tokens_file" in keys
    for key in keys:
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"docs/deploy.md names {key}, no such key"
            node = node[part]
    for var in set(re.findall(r"\bNIMTRAIL_[A-Z_]+\b", guide)):
        if var in config_mod.RESERVED_ENV:
            continue
        config_mod.load(None, env={var: "/x" if var.endswith("_FILE") else "1"})  # ConfigError if unknown


def test_discovery_annotations_are_documented():
    from collector.kubernetes_sd import ANNOTATIONS

    guide = (DOCS / "deploy.md").read_text()
    for annotation in ANNOTATIONS:
        assert f"`{annotation}`" in guide, f"docs/deploy.md does not explain {annotation}"


def test_compose_and_systemd_read_their_tokens_from_secrets():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    config = yaml.safe_load((DEPLOY / "compose" / "nimtrail.yaml").read_text())
    secret_paths = {"collector": config["collector"]["auth"]["tokens_file"],
                    "warehouse": config["warehouse"]["tokens_file"],
                    "app": compose["services"]["app"]["environment"]["NIMTRAIL_TOKEN_FILE"]}
    for service, path in secret_paths.items():
        name = path.removeprefix("/run/secrets/")
        assert name in compose["services"][service]["secrets"] and name in compose["secrets"], service
    for unit in (DEPLOY / "systemd").glob("*.service"):
        lines = [line for line in unit.read_text().splitlines() if not line.startswith("#")]
        credentials = {line.split("=", 1)[1].split(":", 1)[0] for line in lines
                       if line.startswith("LoadCredential=")}
        for line in lines:
            if line.startswith("Environment=NIMTRAIL_") and "%d/" in line:
                var, value = line.removeprefix("Environment=").split("=", 1)
                assert value.removeprefix("%d/") in credentials, f"{unit.name}: {var}"
                if var not in config_mod.RESERVED_ENV:
                    config_mod.load(None, env={var: "/x"})  # the variable names a real key


def test_collectors_that_publish_their_ports_listen_beyond_loopback():
    """The collector binds loopback by default; a deployment that publishes its ports must
    say 0.0.0.0, or senders would find the ports published and nothing listening."""
    assert DEFAULTS.collector.otlp_grpc.host == DEFAULTS.collector.otlp_http.host == "127.0.0.1"
    configmap = next(d for d in _documents(K8S / "configmap.yaml") if d.get("kind") == "ConfigMap")
    published = [yaml.safe_load(configmap["data"]["nimtrail.yaml"]),  # the collector Deployment's
                 yaml.safe_load((DEPLOY / "compose" / "nimtrail.yaml").read_text())]
    for doc in published:
        collector = doc["collector"]
        assert config_mod.HostPort(collector["otlp_grpc"]).host == "0.0.0.0"
        assert config_mod.HostPort(collector["otlp_http"]).host == "0.0.0.0"


def test_the_warehouse_shards_are_the_statefulsets_pods_and_pod_0_answers():
    """Scaling the warehouse is replicas and warehouse.shards set to one number: pod i is
    shard i, the query Service reaches pod 0 (the front), and the front reaches each shard
    by its name under the headless Service that warehouse.shard_api names."""
    [warehouse] = [d for d in _by_kind("StatefulSet") if d["metadata"]["name"] == "nimtrail-warehouse"]
    [container] = _pod_spec(warehouse)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NIMTRAIL_WAREHOUSE__SHARD"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    services = {s["metadata"]["name"]: s["spec"] for s in _by_kind("Service")}
    assert services["nimtrail-warehouse"]["selector"]["statefulset.kubernetes.io/pod-name"] == "nimtrail-warehouse-0"
    headless = services[warehouse["spec"]["serviceName"]]
    assert headless["clusterIP"] == "None"
    config = yaml.safe_load(_by_kind("ConfigMap")[0]["data"]["nimtrail.yaml"])["warehouse"]
    assert config["shards"] == warehouse["spec"]["replicas"]
    assert config["shard_api"].startswith(f"nimtrail-warehouse-{{shard}}.{warehouse['spec']['serviceName']}.")
