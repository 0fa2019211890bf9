"""The bundled Apache Kafka broker: resolve its jars with Maven, run it in KRaft mode.

One node acts as broker and controller on loopback. The jars come from Maven Central through
`deploy/kafka/pom.xml` into a cache directory outside the source tree, so repeated starts
never download again. The broker's state (KRaft metadata, logs, pid, ports) lives in the
data directory it is given, which is what lets `nimtrail kafka stop|status` find it later.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from nimtrail.errors import NimtrailError


POM = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "pom.xml"
STATE_FILE = "broker.json"


def new_cluster_id() -> str:
    """A Kafka cluster id: a base64url UUID without padding (22 characters). Like Kafka's own
    Uuid.randomUuid, never one starting with '-', which the storage tool would read as an
    option."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


class BrokerError(NimtrailError):
    """The bundled broker could not be resolved, started or stopped."""


def cache_dir() -> Path:
    """Where resolved jars live; shared by every checkout and data directory."""
    base = os.environ.get("NIMTRAIL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nimtrail"
    )
    return Path(base)


def kafka_version() -> str:
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


def _require(tool: str, package_hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise BrokerError(
            f"`{tool}` was not found on PATH. The bundled Kafka broker needs {package_hint}. "
            "Install it (Debian: `apt-get install openjdk-17-jre-headless maven`), "
            "or set kafka.bootstrap to an existing cluster."
        )
    return path


def resolve_jars() -> Path:
    """Return the directory holding the broker's jars, resolving them once with Maven."""
    libs = cache_dir() / f"kafka-{kafka_version()}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    _require("java", "Java 17 or newer")
    mvn = _require("mvn", "Apache Maven to fetch the Kafka jars from Maven Central")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(
            "Maven could not resolve the Kafka jars:\n" + (result.stdout + result.stderr)[-4000:]
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(kafka_version())
    return libs


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class BrokerHandle:
    """What a running bundled broker is: enough to reach it and to stop it."""

    data_dir: Path
    host: str
    port: int
    controller_port: int
    pid: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def _server_properties(data_dir: Path, host: str, port: int, cport: int,
                       extra: dict[str, str] | None) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir / "kraft-logs"),
        "num.partitions": "2",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "168",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    props.update(extra or {})
    return "".join(f"{k}={v}\n" for k, v in props.items())




def _java_cmd(libs: Path, data_dir: Path, main: str, *args: str, heap: str = "768m") -> list[str]:
    java = _require("java", "Java 17 or newer")
    return [
        java, "-Xms128m", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        "-cp", f"{libs}/*", main, *args,
    ]


def _write_log_config(data_dir: Path) -> None:
    log = data_dir / "broker.log"
    (data_dir / "log4j2.properties").write_text(
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {log}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = file\n"
    )


def read_state(data_dir: Path) -> BrokerHandle | None:
    path = Path(data_dir) / "kafka" / STATE_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return BrokerHandle(Path(raw["data_dir"]), raw["host"], raw["port"], raw["controller_port"], raw["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def status(data_dir: Path) -> BrokerHandle | None:
    """The broker recorded in data_dir if its process is alive and accepting connections."""
    handle = read_state(data_dir)
    if handle and _alive(handle.pid) and _port_open(handle.host, handle.port):
        return handle
    return None


def start(data_dir: Path, *, host: str = "127.0.0.1", port: int = 9092, controller_port: int = 0,
          timeout: float = 120.0, extra_properties: dict[str, str] | None = None,
          scram_users: dict[str, str] | None = None) -> BrokerHandle:
    """Start (or reuse) the bundled broker whose state lives in data_dir/kafka.

    Formats KRaft storage on first use, then waits until the broker accepts clients on its
    PLAINTEXT listener. A port of 0 picks a free one. `extra_properties` add listeners
    (e.g. SASL_SSL) or override defaults; `scram_users` (name -> password) are created as
    SCRAM-SHA-512 and SCRAM-SHA-256 credentials when storage is formatted.
    """
    data_dir = Path(data_dir).resolve() / "kafka"
    data_dir.mkdir(parents=True, exist_ok=True)
    running = status(data_dir.parent)
    if running:
        return running
    libs = resolve_jars()
    port = port or free_port(host)
    if _port_open(host, port):
        raise BrokerError(f"port {host}:{port} is already in use by another process; "
                          "set kafka.port or stop the other process")
    cport = controller_port or free_port(host)
    props = data_dir / "server.properties"
    props.write_text(_server_properties(data_dir, host, port, cport, extra_properties))
    _write_log_config(data_dir)
    meta = data_dir / "kraft-logs" / "meta.properties"
    if not meta.exists():
        cluster_id = data_dir / "cluster.id"
        if not cluster_id.exists() or cluster_id.read_text().startswith("-"):
            cluster_id.write_text(new_cluster_id())
        scram = []
        for name, password in (scram_users or {}).items():
            for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                scram += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        fmt = subprocess.run(
            _java_cmd(libs, data_dir, "kafka.tools.StorageTool", "format", "-t",
                      cluster_id.read_text().strip(), "-c", str(props), "--ignore-formatted",
                      *scram, heap="256m"),
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError("formatting KRaft storage failed:\n" + fmt.stdout + fmt.stderr)
    out = open(data_dir / "broker.out", "ab")
    proc = subprocess.Popen(
        _java_cmd(libs, data_dir, "kafka.Kafka", str(props)),
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal must not reach the broker before us
    )
    handle = BrokerHandle(data_dir.parent, host, port, cport, proc.pid)
    (data_dir / STATE_FILE).write_text(json.dumps(
        {"data_dir": str(data_dir.parent), "host": host, "port": port,
         "controller_port": cport, "pid": proc.pid}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"the Kafka broker exited with code {proc.returncode}; "
                              f"see {data_dir / 'broker.log'} and {data_dir / 'broker.out'}")
        if _port_open(host, port) and _accepts_clients(handle.bootstrap):
            return handle
        time.sleep(0.2)
    stop(data_dir.parent)
    raise BrokerError(f"the Kafka broker did not accept clients within {timeout:.0f}s; "
                      f"see {data_dir / 'broker.log'}")


def _accepts_clients(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                 client_id="nimtrail-broker-probe")
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def stop(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker recorded in data_dir; True if one was running."""
    handle = read_state(data_dir)
    if not handle or not _alive(handle.pid):
        return False
    os.kill(handle.pid, signal.SIGTERM)  # Kafka shuts down cleanly on SIGTERM
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(handle.pid):
            _reap(handle.pid)
            return True
        _reap(handle.pid)
        time.sleep(0.1)
    os.kill(handle.pid, signal.SIGKILL)
    _reap(handle.pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
