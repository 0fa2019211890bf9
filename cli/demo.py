"""`nimtrail up --demo`: the simulator as one more supervised child, feeding the pipeline.

The simulator's ports are chosen here, before anything starts, so that the collector can
be told where to scrape and which files to tail (through NIMTRAIL_COLLECTOR__* overrides
of the configuration every child reads); its spans go to the collector's OTLP/HTTP port.
Once the incident has happened, the demo prints one ready-to-paste trace-back command.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nimtrail import api_client, config as config_mod
from nimtrail.config import Config
from nimtrail.errors import NimtrailError

DEMO_JOIN_WINDOW = "15s"
DEMO_CONTENT = ("keep_prompts", "keep_responses", "keep_arguments")
TRACEABLE_WAIT = 30.0  # seconds to wait for the pipeline to record the incident before printing


def _free_range(count: int, attempts: int = 50) -> int:
    """A base port with `count` consecutive free loopback ports above it."""
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise NimtrailError(f"could not find {count} consecutive free ports for the simulator")


def _say(message: str) -> None:
    print(f"nimtrail: {message}", flush=True)


class Demo:
    def __init__(self, config: Config, config_path: str | None, scenario_path: str | None = None):
        import simulator

        self.config = config
        self.config_path = str(Path(config_path).resolve()) if config_path else None
        self.scenario = simulator.scenario.load(scenario_path)
        self.scenario_path = str(Path(scenario_path).resolve()) if scenario_path else None
        self.out_dir = (config.data_path / "simulator").resolve()
        # A fresh seed per run: a second run on the same data directory adds new traffic
        # instead of replaying the first run's ids.
        self.seed = random.SystemRandom().randrange(1, 2**31)
        self.port_base = _free_range(2 * len(self.scenario.deployments))
        self.ports = {spec.id: (self.port_base + 2 * i, self.port_base + 2 * i + 1)
                      for i, spec in enumerate(self.scenario.deployments)}
        self._supervisor: Any = None
        self._registered: set[tuple[str, int, str]] = set()
        self._registering: tuple[subprocess.Popen, tuple[str, int, str]] | None = None
        self._incident: dict[str, Any] | None = None
        self._incident_seen = 0.0
        self._printed = False
        # The simulator resumes the scenario where an earlier run on this data directory left
        # it: its incident, if it happened, is the one to report; its rollouts are written anew.
        if not simulator.read_progress(self.out_dir).incident:
            (self.out_dir / simulator.INCIDENT_FILE).unlink(missing_ok=True)
        for stale in self.out_dir.glob("deployments/*/*/rollouts.json"):
            stale.unlink(missing_ok=True)

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.config.app.port}"

    @property
    def collector_http(self) -> str:
        return f"http://127.0.0.1:{self.config.collector.otlp_http.port}"

    def children(self) -> list[tuple[str, list[str]]]:
        config_args = ["--config", self.config_path] if self.config_path else []
        return [("simulator", [sys.executable, "-m", "nimtrail", *config_args, "simulate",
                               "--out", str(self.out_dir), "--otlp", self.collector_http,
                               "--seed", str(self.seed), "--duration", "0",
                               "--port-base", str(self.port_base), "--resume",
                               *(["--scenario", self.scenario_path] if self.scenario_path else []),
                               "--wait-for", f"{self.collector_http}/healthz"])]

    def env(self) -> dict[str, str]:
        """Collector targets for the simulated fleet, added to the configured ones."""
        import simulator

        current = config_mod.as_dict(self.config)["collector"]
        filelog, scrape, metadata = list(current["filelog"]), list(current["scrape"]), list(current["nim_metadata"])
        for spec in self.scenario.deployments:
            api, dcgm = self.ports[spec.id]
            glob = simulator.log_glob(self.out_dir, spec)
            filelog.append({"include": [glob], "deployment": spec.id})
            scrape.append({"url": f"http://127.0.0.1:{api}/v1/metrics", "deployment": spec.id,
                           "interval": 15.0})
            scrape.append({"url": f"http://127.0.0.1:{dcgm}/metrics", "deployment": spec.id,
                           "interval": 15.0})
            metadata.append({"url": f"http://127.0.0.1:{api}", "deployment": spec.id, "interval": 60.0})
        overrides = {"NIMTRAIL_COLLECTOR__FILELOG": json.dumps(filelog),
                     "NIMTRAIL_COLLECTOR__SCRAPE": json.dumps(scrape),
                     "NIMTRAIL_COLLECTOR__NIM_METADATA": json.dumps(metadata)}
        if self.config.processor.join_window == config_mod.ProcessorConfig().join_window:
            # Findings are judged once a record has settled for the join window; a demo
            # viewer should not wait the production default of five minutes to see them.
            overrides["NIMTRAIL_PROCESSOR__JOIN_WINDOW"] = DEMO_JOIN_WINDOW
        if not any(getattr(self.config.processor.content, key) for key in DEMO_CONTENT):
            # The incident journey shows what the model was asked and what it asked for:
            # the demo keeps prompts, responses and tool arguments (redacted, and shown
            # only to roles that may see content), unless the config decides otherwise.
            overrides.update({f"NIMTRAIL_PROCESSOR__CONTENT__{key.upper()}": "true" for key in DEMO_CONTENT})
        return overrides

    def announce(self, supervisor: Any = None) -> None:
        self._supervisor = supervisor
        _say(f"simulator           {len(self.scenario.deployments)} NIM deployments, seed {self.seed}, "
             f"files in {self.out_dir}")
        for spec in self.scenario.deployments:
            api, dcgm = self.ports[spec.id]
            _say(f"  {spec.id:<22} http://127.0.0.1:{api}/v1/metrics  http://127.0.0.1:{dcgm}/metrics (DCGM)")
        _say(f"the incident ({self.scenario.incident.client} runs {self.scenario.incident.tool}) "
             f"happens about {float(self.scenario.incident.at):g}s after the simulator starts; "
             f"open the app at {self.app_url} to trace it back")

    def poll(self) -> None:
        """Called by the supervisor's watch loop: register what the simulated fleet rolls
        out, and print the trace-back command once."""
        import simulator

        self._register()
        if self._printed:
            return
        if self._incident is None:
            try:
                self._incident = json.loads((self.out_dir / simulator.INCIDENT_FILE).read_text())
            except (OSError, ValueError):
                return
            self._incident_seen = time.monotonic()
        if not self._recorded() and time.monotonic() - self._incident_seen < TRACEABLE_WAIT:
            return
        self._printed = True
        inc = self._incident
        config = f"--config {self.config_path} " if self.config_path else ""
        _say(f"incident: {inc['client_service']} ({inc['caller']}) ran {inc['tool']} on {inc['target']} "
             f"through {inc['deployment_id']}, gate {inc['gate']} ({inc['gate_decision']})")
        _say("trace it back with:")
        # ./dev sets NIMTRAIL_CLI_NAME so the printed command works as pasted.
        cli = os.environ.get("NIMTRAIL_CLI_NAME") or "nimtrail"
        print(f"    {cli} {config}trace-back --tool-call-id {inc['tool_call_id']}", flush=True)
        _say("or in the app (its Trace back page lists it among the recent actions):")
        print(f"    {self.app_url}/?tool_call_id={inc['tool_call_id']}", flush=True)

    def _recorded(self) -> bool:
        try:
            found = api_client.query(self.config.api_url, "trace-back",
                                     {"tool_call_id": self._incident["tool_call_id"]},
                                     token=api_client.env_token(), timeout=2.0)
        except (api_client.ApiError, ValueError):  # not up yet: ask again on the next poll
            return False
        return bool(found.get("found") and found.get("call"))

    # -- registration -----------------------------------------------------------------

    def _register(self) -> None:
        """Register each revision the simulator rolls out (Helm values, the pod's metadata,
        the governance file with a deployment's first revision of this run), valid from
        when it went live, one registration at a time."""
        if self._registering is not None:
            process, key = self._registering
            if process.poll() is None:
                return
            output = (process.stdout.read() if process.stdout else "").strip()
            if output:
                _say(output.splitlines()[-1])
            self._registering = None
            self._registered.add(key)
        for spec in self.scenario.deployments:
            directory = self.out_dir / "deployments" / spec.namespace / spec.name
            try:
                rollouts = json.loads((directory / "rollouts.json").read_text())
            except (OSError, ValueError):
                continue
            for i, rollout in enumerate(rollouts):
                key = (spec.id, rollout["revision"], rollout["rolled_out_at"])
                if key in self._registered:
                    continue
                n = rollout["revision"]
                files = [directory / f"values-r{n}.yaml", directory / f"metadata-r{n}.json"]
                if i == 0:
                    files.append(directory / "governance.yaml")
                config = ["--config", self.config_path] if self.config_path else []
                env = self._supervisor.child_env() if self._supervisor else None
                process = subprocess.Popen(
                    [sys.executable, "-m", "nimtrail", *config, "deployments", "register",
                     *map(str, files), "--deployment", spec.id, "--valid-from", rollout["rolled_out_at"]],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    text=True)
                self._registering = (process, key)
                return
