"""The shipped deployment files agree with the code: commands and flags exist, ports match
the config defaults, embedded configs validate, and no secret is inlined."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from nimtrail import config as config_mod
from nimtrail.cli import parser

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
                    key = where.rsplit(".", 1)[-1]
                    if (SECRET_NAME.search(key) and not key.endswith(("_file", "Name", "secretName"))
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
