"""The simulator's scenario: a YAML file describing a small NIM fleet and its clients.

Same rules as nimtrail's own configuration: frozen dataclasses, unknown keys and wrong
types rejected with a message naming the key, cross-references checked at load (a client
naming a deployment that does not exist is an error, not a silent no-op). Loading is pure.
See docs/simulator.md for the format.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any


# The configuration loader already does exactly what a scenario needs (typed fields,
# unknown keys named); sharing it keeps the two files' error messages alike.
from nimtrail.config import Duration, build_section, parse_yaml, read_yaml
from nimtrail.errors import ConfigError

ENGINES = ("vllm", "tensorrt_llm", "sglang")
GATES = ("none", "human", "policy")
LOG_WRAPS = ("none", "cri")


@dataclasses.dataclass(frozen=True)
class GpuModel:
    dcgm_name: str  # DCGM's modelName label
    product: str  # the node label nvidia.com/gpu.product
    device: str  # PCI device:vendor, as NIM's profile metadata prints it
    memory_mib: int


GPUS = {
    "H100": GpuModel("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3", "2330:10de", 81559),
    "A100": GpuModel("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB", "20b2:10de", 81920),
    "L40S": GpuModel("NVIDIA L40S", "NVIDIA-L40S", "26b9:10de", 46068),
}


@dataclasses.dataclass(frozen=True)
class Release:
    """What one Helm revision runs: image, NIM release, profile, and how fast it answers."""

    image: str = ""  # repository, e.g. nvcr.io/nim/meta/llama-3.1-8b-instruct
    tag: str = ""
    nim_release: str = ""  # 1.x releases log and expose metrics in the 1.x shapes
    engine: str = "vllm"
    precision: str = "bf16"
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    optimization: str = "throughput"  # throughput | latency (profile tag `profile`)
    lora: bool = False
    ttft_ms: float = 60.0  # median time to first token for a short prompt
    tpot_ms: float = 12.0  # time per output token

    def validate(self, path: str) -> None:
        for key in ("image", "tag", "nim_release"):
            if not getattr(self, key):
                raise ConfigError(f"{path}.{key}: required")
        if self.engine not in ENGINES:
            raise ConfigError(f"{path}.engine: expected one of {', '.join(ENGINES)}")
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ConfigError(f"{path}.tensor_parallel: must be at least 1")

    @property
    def major(self) -> int:
        return int(self.nim_release.split(".", 1)[0] or 1)

    def profile_name(self, gpu: str) -> str:
        """NIM's profile naming: TRT-LLM profiles name the GPU and optimisation target."""
        parts = [self.engine]
        if self.engine == "tensorrt_llm":
            parts.append(gpu.lower())
        parts += [self.precision, f"tp{self.tensor_parallel}", f"pp{self.pipeline_parallel}"]
        if self.engine == "tensorrt_llm":
            parts.append(self.optimization)
        if self.lora:
            parts.append("lora")
        return "-".join(parts)


@dataclasses.dataclass(frozen=True)
class Upgrade:
    at: Duration = Duration(20)  # seconds after the start of the run
    release: Release = Release()


@dataclasses.dataclass(frozen=True)
class Governance:
    purpose: str = ""
    tool_calling_allowed: bool = False
    allowed_clients: tuple[str, ...] = ()
    tool_servers: tuple[str, ...] = ()
    destructive_tools: tuple[str, ...] = ()
    reviewed_by: str = ""
    update_channel: str = "stable"


@dataclasses.dataclass(frozen=True)
class DeploymentSpec:
    id: str = ""  # <namespace>/<release name>
    model: str = ""  # served model name
    release: Release = Release()
    gpu: str = "H100"
    upgrades: tuple[Upgrade, ...] = ()
    log_wrap: str = "none"  # none | cri (kubelet's /var/log/pods layout)
    metrics_prefix: str = "auto"  # auto: "" for 1.x, "vllm:" for 2.x; or "sglang:"
    tool_call_parser: str = ""  # non-empty: NIM_ENABLE_AUTO_TOOL_CHOICE is on
    tracing: bool = True  # emits vLLM's llm_request spans
    port: int = 0  # /v1/* on 127.0.0.1; 0: a free port (or --port-base)
    dcgm_port: int = 0  # DCGM exporter's /metrics; 0: a free port
    governance: Governance = Governance()

    def validate(self, path: str) -> None:
        namespace, sep, name = self.id.partition("/")
        if not (namespace and sep and name) or "/" in name:
            raise ConfigError(f"{path}.id: expected <namespace>/<name>, got {self.id!r}")
        if not self.model:
            raise ConfigError(f"{path}.model: required")
        self.release.validate(f"{path}.release")
        for i, upgrade in enumerate(self.upgrades):
            upgrade.release.validate(f"{path}.upgrades[{i}].release")
        if self.gpu not in GPUS:
            raise ConfigError(f"{path}.gpu: expected one of {', '.join(GPUS)}")
        if self.log_wrap not in LOG_WRAPS:
            raise ConfigError(f"{path}.log_wrap: expected one of {', '.join(LOG_WRAPS)}")
        if self.metrics_prefix not in ("auto", "", "vllm:", "sglang:"):
            raise ConfigError(f"{path}.metrics_prefix: expected auto, \"\", vllm: or sglang:")

    @property
    def namespace(self) -> str:
        return self.id.partition("/")[0]

    @property
    def name(self) -> str:
        return self.id.partition("/")[2]


@dataclasses.dataclass(frozen=True)
class McpServer:
    name: str = ""  # its service.name
    address: str = ""  # host:port clients connect to

    def validate(self, path: str) -> None:
        if not self.name or ":" not in self.address:
            raise ConfigError(f"{path}: name and address (host:port) are required")


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str = ""
    mcp_server: str = ""
    gate: str = "none"  # none | human | policy
    approver: str = ""  # who approves a human gate
    policy_id: str = ""  # which policy decides a policy gate
    target: str = ""  # what it acts on; {n} becomes a number
    destructive: bool = False
    arguments: str = "{}"  # JSON template of the arguments; {n} becomes a number

    def validate(self, path: str) -> None:
        if not self.name:
            raise ConfigError(f"{path}.name: required")
        if self.gate not in GATES:
            raise ConfigError(f"{path}.gate: expected one of {', '.join(GATES)}")


@dataclasses.dataclass(frozen=True)
class Client:
    service: str = ""  # service.name of the calling application
    users: tuple[str, ...] = ()
    deployment: str = ""
    weight: float = 1.0
    agent: str = ""  # non-empty: an agent (invoke_agent span) that may call tools
    tools: tuple[str, ...] = ()
    tool_probability: float = 0.5
    propagate_context: bool = True  # sends traceparent to NIM
    address: str = "10.0.0.1"  # peer address NIM's access log shows
    prompt: str = "Summarise the following ticket thread."

    def validate(self, path: str) -> None:
        if not self.service or not self.users:
            raise ConfigError(f"{path}: service and at least one user are required")
        if self.weight < 0 or not 0 <= self.tool_probability <= 1:
            raise ConfigError(f"{path}.weight: weights and probabilities must be non-negative")


@dataclasses.dataclass(frozen=True)
class Incident:
    """A destructive tool run after a model response, auto-approved by policy, through an
    endpoint whose governance does not allow tool calling."""

    at: Duration = Duration(6)
    client: str = "ops-agent"
    user: str = "oncall-bot"
    deployment: str = ""
    tool: str = "delete_records"
    target: str = "prod-db/customers"
    arguments: str = "{}"
    prompt: str = "Disk on prod-db is at 95%. Free up space."
    policy_id: str = ""  # default: the tool's own


@dataclasses.dataclass(frozen=True)
class LogSettings:
    rotate_bytes: int = 1024 * 1024
    keep: int = 3  # rotated files kept
    cri_max_line: int = 16 * 1024  # longer lines are split into P(artial) records
    stats_interval: Duration = Duration(5)  # vLLM's periodic throughput line
    probe_interval: Duration = Duration(10)  # kubelet's readiness probe


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    seed: int = 7
    rate: float = 2.0  # client requests per second, over all clients
    duration: Duration = Duration(0)  # 0: until stopped
    deployments: tuple[DeploymentSpec, ...] = ()
    mcp_servers: tuple[McpServer, ...] = ()
    tools: tuple[Tool, ...] = ()
    clients: tuple[Client, ...] = ()
    incident: Incident = Incident()
    logs: LogSettings = LogSettings()

    def validate(self, _path: str) -> None:
        if not self.deployments:
            raise ConfigError("deployments: at least one is required")
        if not self.clients:
            raise ConfigError("clients: at least one is required")
        if self.rate <= 0:
            raise ConfigError("rate: must be positive")
        ids = [d.id for d in self.deployments]
        _unique("deployments", "id", ids)
        _unique("clients", "service", [c.service for c in self.clients])
        _unique("tools", "name", [t.name for t in self.tools])
        servers = {m.name for m in self.mcp_servers}
        tools = {t.name for t in self.tools}
        for i, tool in enumerate(self.tools):
            if tool.mcp_server not in servers:
                raise ConfigError(f"tools[{i}].mcp_server: unknown MCP server {tool.mcp_server!r}")
        for i, client in enumerate(self.clients):
            if client.deployment not in ids:
                raise ConfigError(f"clients[{i}].deployment: unknown deployment {client.deployment!r}")
            for name in client.tools:
                if name not in tools:
                    raise ConfigError(f"clients[{i}].tools: unknown tool {name!r}")
            if client.tools and not client.agent:
                raise ConfigError(f"clients[{i}].agent: a client with tools is an agent; name it")
        inc = self.incident
        if inc.client not in {c.service for c in self.clients}:
            raise ConfigError(f"incident.client: unknown client {inc.client!r}")
        if inc.deployment not in ids:
            raise ConfigError(f"incident.deployment: unknown deployment {inc.deployment!r}")
        if inc.tool not in tools:
            raise ConfigError(f"incident.tool: unknown tool {inc.tool!r}")

    def deployment(self, deployment_id: str) -> DeploymentSpec:
        return next(d for d in self.deployments if d.id == deployment_id)

    def tool(self, name: str) -> Tool:
        return next(t for t in self.tools if t.name == name)

    def client(self, service: str) -> Client:
        return next(c for c in self.clients if c.service == service)

    def mcp_server(self, name: str) -> McpServer:
        return next(m for m in self.mcp_servers if m.name == name)


def _unique(section: str, key: str, values: list[str]) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ConfigError(f"{section}[{i}].{key}: {value!r} appears twice")
        seen.add(value)


DEFAULT = "default.yaml"


def parse(data: Any, source: str = "scenario") -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return build_section(Scenario, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e


def load(path: str | Path | None = None) -> Scenario:
    """Load a scenario file; without a path, the one shipped with the package."""
    if path is None:
        source = f"built-in scenario {DEFAULT}"
        text = resources.files("simulator.scenarios").joinpath(DEFAULT).read_text()
        return parse(parse_yaml(text, source), source)
    return parse(read_yaml(path, "the scenario"), str(path))
