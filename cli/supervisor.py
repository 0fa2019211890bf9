"""`nimtrail up`: the broker (unless an external one is configured), every stage as its own
process, restarted if it dies, all stopped on Ctrl-C.

Stages are separate processes so that one crashing cannot take the others down, and so
that the delivery guarantees are exercised exactly as in a distributed deployment.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from cli import broker
from nimtrail.config import Config

STAGES = ("warehouse", "processor", "collector", "app")
RESTART_BACKOFF = (1, 2, 5, 10, 30)


@dataclasses.dataclass
class Child:
    stage: str
    args: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    restart_at: float | None = None  # monotonic time of a pending restart
    source: bool = False  # an extra child feeding the pipeline (the demo's simulator)


def _say(message: str) -> None:
    print(f"nimtrail: {message}", flush=True)


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, extra: list[tuple[str, list[str]]] = (),
                 env: dict[str, str] | None = None, processors: int = 1):
        self.config = config
        self.config_path = config_path
        self.extra_env = dict(env or {})
        nimtrail = [sys.executable, "-m", "nimtrail", *self._config_args()]
        self.children = [Child(stage, [*nimtrail, stage]) for stage in STAGES
                         if stage not in ("processor", "warehouse")]
        self.children[:0] = ([Child(name, [*nimtrail, "warehouse", *args])
                              for name, args in warehouse_children(config)]
                             + [Child(name, [*nimtrail, "processor", *args])
                                for name, args in processor_children(config, processors)])
        self.children += [Child(name, args, source=True) for name, args in extra]
        self.started_broker = False
        self.bootstrap = config.kafka.bootstrap
        self._stopping = False

    def _config_args(self) -> list[str]:
        return ["--config", self.config_path] if self.config_path else []

    def child_env(self) -> dict[str, str]:
        """The environment every child runs with (also for one-off commands)."""
        env = {**os.environ, **self.extra_env}
        env["NIMTRAIL_KAFKA__BOOTSTRAP"] = self.bootstrap
        env["NIMTRAIL_DATA_DIR"] = str(Path(self.config.data_dir).resolve())
        env["NIMTRAIL_WAREHOUSE__SHARDS"] = str(self.config.warehouse.shards)  # (`up --shards`)
        env["NIMTRAIL_PROCESSOR__PARTITIONS"] = str(self.config.processor.partitions)  # (`up --partitions`)
        return env

    def _spawn(self, child: Child) -> None:
        log_dir = Path(self.config.data_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{child.stage}.log", "ab")
        child.process = subprocess.Popen(child.args, env=self.child_env(), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        child.started = time.monotonic()

    def start(self) -> None:
        if not self.bootstrap:
            _say("starting the bundled Kafka broker (first start resolves its jars with Maven)…")
            handle = broker.start(self.config.data_path, port=self.config.kafka.port)
            self.started_broker = True
            self.bootstrap = handle.bootstrap
        _say(f"Kafka at {self.bootstrap}")
        for child in self.children:
            self._spawn(child)
        c = self.config
        _say(f"collector OTLP/HTTP  http://127.0.0.1:{c.collector.otlp_http.port}/v1/traces")
        _say(f"query API           {c.api_url}/v1/query/calls")
        _say(f"app                 http://127.0.0.1:{c.app.port}")
        _say(f"logs                {Path(c.data_dir) / 'logs'}")

    def watch(self, until: float | None = None, poll: Callable[[], None] | None = None) -> None:
        """Restart stages that die, until stopped (or `until`, a monotonic deadline);
        `poll()` runs on every turn (the demo uses it to report the incident)."""
        while not self._stopping and (until is None or time.monotonic() < until):
            if poll:
                poll()
            now = time.monotonic()
            for child in self.children:
                if self._stopping or not child.process or child.process.poll() is None:
                    continue
                if child.restart_at is None:
                    # A restart waits out its backoff without blocking the loop, so Ctrl-C
                    # and the other children are still served meanwhile.
                    _signal_group(child.process, signal.SIGTERM)  # what it left behind
                    if now - child.started > 60:
                        child.restarts = 0
                    delay = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
                    _say(f"{child.stage} exited with code {child.process.returncode}; restarting in "
                         f"{delay}s (see {Path(self.config.data_dir) / 'logs' / (child.stage + '.log')})")
                    child.restart_at = now + delay
                elif now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    self._spawn(child)
            time.sleep(0.5)

    def stop(self) -> None:
        self._stopping = True
        # Stop in reverse order of the data flow: sources first, the warehouse last. Extra
        # children (the demo's simulator) are sources: they finish sending before the
        # collector they send to goes away.
        self._terminate([c for c in self.children if c.source])
        self._terminate([c for c in self.children if not c.source])
        if self.started_broker:
            broker.stop(self.config.data_path)
        _say("stopped")

    def _terminate(self, children: list[Child]) -> None:
        # Each child leads its own process group (start_new_session): signalling the group
        # also stops what it started itself (the app's Streamlit server), which would
        # otherwise outlive it and keep its port.
        for child in reversed(children):
            if child.process and child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        for child in reversed(children):
            if child.process:
                try:
                    child.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _signal_group(child.process, signal.SIGKILL)
                    child.process.wait()
                _signal_group(child.process, signal.SIGTERM)  # leftovers of a child that exited


def processor_children(config: Config, count: int) -> list[tuple[str, list[str]]]:
    """(name, arguments) of each processor `up` runs: with processor.partitions, members that
    share the join (processors/partitioned_loop.py); without, one reads the input and the
    others stand by to take over (processors/membership.py). The first is the plain `nimtrail processor`;
    the k-th after it has its own static instance id and /metrics port (the ops port + k)."""
    base = config.processor.instance_id or config.processor.group_id
    ops = config.processor.ops
    return [("processor", [])] + [
        (f"processor-{k}", ["--instance-id", f"{base}-{k}", "--ops", f"{ops.host}:{ops.port + k}"])
        for k in range(1, count)]


def warehouse_children(config: Config) -> list[tuple[str, list[str]]]:
    """(name, arguments) of each warehouse shard `up` runs: the plain `nimtrail warehouse`
    for one shard; `warehouse-<i>` with `--shard i` for each of several."""
    if config.warehouse.shards == 1:
        return [("warehouse", [])]
    return [(f"warehouse-{i}", ["--shard", str(i)]) for i in range(config.warehouse.shards)]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # the group is gone already
    except PermissionError:
        process.send_signal(signum)


def up(config: Config, config_path: str | None, duration: float | None = None,
       extra: list[tuple[str, list[str]]] = (), on_ready=None, env: dict[str, str] | None = None,
       poll: Callable[[], None] | None = None, processors: int = 1) -> None:
    supervisor = Supervisor(config, config_path, list(extra), env, processors)

    def request_stop(_signum: int, _frame: object) -> None:
        supervisor._stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        supervisor.start()
        if on_ready:
            on_ready(supervisor)
        _say("running; press Ctrl-C to stop")
        supervisor.watch(None if duration is None else time.monotonic() + duration, poll)
    finally:
        supervisor.stop()
