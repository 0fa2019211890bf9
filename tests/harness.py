"""Helpers for integration tests: configs with unique topics and free ports, stages run as
real processes, and waiting on conditions with a deadline instead of sleeping."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from nimtrail import config as config_mod
from cli.broker import free_port

REPO = Path(__file__).resolve().parent.parent
# Ports a stage derives from a configured one: a standby's ops port + k, a warehouse
# shard's API port + 10 + i (warehouse/shards.py).
OPS_PORTS, API_PORTS = 4, 14


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports that are free now, below the range the system
    hands outgoing connections: a port derived from a configured one (ops + k) is then not
    taken meanwhile as some client connection's source port, as one from free_port() can be."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for _ in range(500):
        base = random.randrange(20000, ephemeral - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    return free_port(host)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    """Poll until `condition()` is truthy; return its value or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling; report the last one
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def scrape(url: str) -> dict[str, float]:
    """A stage's Prometheus text as {name or name{labels}: value}; {} when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Env:
    """One test's nimtrail world: a config file with unique topics and free ports."""

    def __init__(self, tmp: Path, bootstrap: str, **overrides: Any):
        self.dir = tmp
        suffix = uuid.uuid4().hex[:8]
        defaults = config_mod.as_dict(config_mod.Config())
        topics = {k: f"{v}.{suffix}" for k, v in defaults["topics"].items()}
        self.ports = {"http": free_port(), "grpc": free_port(), "api": free_port_block(API_PORTS),
                      "ops": free_port_block(OPS_PORTS), "app": free_port()}
        doc: dict[str, Any] = {
            "data_dir": str(tmp / "data"),
            "kafka": {"bootstrap": bootstrap},
            "topics": topics,
            "collector": {"otlp_http": f"127.0.0.1:{self.ports['http']}",
                          "otlp_grpc": f"127.0.0.1:{self.ports['grpc']}"},
            "processor": {"ops": f"127.0.0.1:{self.ports['ops']}",
                          "group_id": f"nimtrail-processor-{suffix}"},
            "warehouse": {"api": f"127.0.0.1:{self.ports['api']}"},
            "app": {"port": self.ports["app"]},
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                doc.setdefault(section, {}).update(values)
            else:
                doc[section] = values
        self.path = tmp / "nimtrail.yaml"
        self.path.write_text(yaml.safe_dump(doc))
        self.config = config_mod.load(self.path, env={})
        self.processes: list[subprocess.Popen] = []

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def start(self, stage: str, faults: str = "", args: tuple[str, ...] = (), log_name: str = "") -> subprocess.Popen:
        """`nimtrail --config <this env> STAGE ARGS`, its output in LOG_NAME (default STAGE).log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")}
        if faults:
            env["NIMTRAIL_FAULTS"] = faults
        log = open(self.dir / f"{log_name or stage}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "nimtrail", "--config", str(self.path), stage, *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def wait_ready(self, stage: str, timeout: float = 60.0) -> None:
        url = {"collector": f"{self.otlp_http}/healthz", "warehouse": f"{self.api}/healthz",
               "processor": f"http://127.0.0.1:{self.ports['ops']}/healthz"}[stage]
        process = next((p for p in reversed(self.processes) if p.args[5] == stage), None)

        def ready() -> bool:
            if process is not None and process.poll() is not None:
                raise SystemExit(f"{stage} exited with {process.returncode}:\n{self.log(stage)[-3000:]}")
            return http_ok(url)

        try:
            wait_for(ready, timeout, what=f"{stage} to be healthy")
        except SystemExit as e:
            raise AssertionError(str(e)) from None

    def log(self, stage: str) -> str:
        path = self.dir / f"{stage}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `nimtrail --config <this env> ARGS`; `env` adds variables (e.g. NIMTRAIL_TOKEN)."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")}, **(env or {})}
        result = subprocess.run([sys.executable, "-m", "nimtrail", "--config", str(self.path), *args],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"nimtrail {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def stop_all(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
