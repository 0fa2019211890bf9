"""nimtrail's configuration: one YAML file, every key overridable from the environment.

Each section is a frozen dataclass; `load()` builds them from YAML and `NIMTRAIL_*`
variables (nesting spelled with a double underscore: `NIMTRAIL_KAFKA__BOOTSTRAP`), rejecting
unknown keys in the file and wrong types anywhere with a message that names the file and the
key; a variable that names no key is only a warning (the environment is shared). Loading is
pure (no network, no files besides the config itself), so `nimtrail check` can validate a
deployment's configuration anywhere.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from nimtrail import topics
from nimtrail.people import PERSON_HEADERS, is_header_name, networks

log = logging.getLogger(__name__)
from nimtrail.errors import ConfigError

ENV_PREFIX = "NIMTRAIL_"
# Variables that steer the CLI itself rather than naming config keys.
RESERVED_ENV = {"NIMTRAIL_CONFIG", "NIMTRAIL_CACHE", "NIMTRAIL_TOKEN", "NIMTRAIL_TOKEN_FILE",
                "NIMTRAIL_FAULTS", "NIMTRAIL_API", "NIMTRAIL_CLI_NAME", "NIMTRAIL_PERSON_HEADERS"}


class Duration(float):
    """Seconds, written in YAML as `15s`, `500ms`, `2m`, `1h`, `7d` or a bare number."""

    _UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

    @classmethod
    def parse(cls, value: Any) -> "Duration":
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 15s")
        if isinstance(value, (int, float)):
            return cls(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
        if not match:
            raise ValueError("expected a duration such as 500ms, 15s, 2m, 1h or 7d")
        return cls(float(match.group(1)) * cls._UNITS[match.group(2) or "s"])


class ByteSize(int):
    """Bytes, written in YAML as `256MB`, `1GiB`, `512KiB` or a bare number of bytes
    (KB, MB, GB count in thousands, KiB, MiB, GiB in 1024s, as DuckDB reads them)."""

    _UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
              "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}

    @classmethod
    def parse(cls, value: Any) -> "ByteSize":
        if isinstance(value, bool):
            raise ValueError("expected a size such as 256MB")
        if isinstance(value, int):
            return cls(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in cls._UNITS:
            raise ValueError("expected a size such as 512KiB, 256MB or 1GiB")
        return cls(int(float(match.group(1)) * cls._UNITS[match.group(2).lower()]))


class HostPort(str):
    """`host:port` (host may be empty or 0.0.0.0 to listen on every interface)."""

    @classmethod
    def parse(cls, value: Any) -> "HostPort":
        text = str(value)
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, such as 127.0.0.1:8700")
        return cls(text)

    @property
    def host(self) -> str:
        return self.rpartition(":")[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.rpartition(":")[2])


# ---- sections -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = ""  # empty: start the bundled broker
    port: int = 9092  # the bundled broker's client port
    client_id: str = "nimtrail"
    partitions: int = 2  # for topics nimtrail creates
    replication_factor: int = 1  # for topics nimtrail creates; 3 on a production cluster
    compression: str = "lz4"
    # Security, passed through to every producer, consumer and admin client.
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""  # client certificate (mutual TLS)
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True
    sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password_file: str = ""  # a mounted secret; preferred over sasl_password
    sasl_password: str = ""  # for NIMTRAIL_KAFKA__SASL_PASSWORD; never put it in the YAML

    def validate(self, path: str) -> None:
        if self.replication_factor < 1:
            raise ConfigError(f"{path}.replication_factor: expected at least 1")
        if self.compression not in {"none", "gzip", "lz4", "snappy", "zstd"}:
            raise ConfigError(f"{path}.compression: expected one of none, gzip, lz4, snappy, zstd")
        protocols = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if self.security_protocol not in protocols:
            raise ConfigError(f"{path}.security_protocol: expected one of {', '.join(sorted(protocols))}")
        if self.security_protocol.startswith("SASL_"):
            mechanisms = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
            if self.sasl_mechanism not in mechanisms:
                raise ConfigError(f"{path}.sasl_mechanism: expected one of {', '.join(sorted(mechanisms))} "
                                  f"with security_protocol {self.security_protocol}")
            if not self.sasl_username:
                raise ConfigError(f"{path}.sasl_username: required with security_protocol "
                                  f"{self.security_protocol}")
            if not (self.sasl_password_file or self.sasl_password):
                raise ConfigError(f"{path}.sasl_password_file: required with security_protocol "
                                  f"{self.security_protocol} (or set NIMTRAIL_KAFKA__SASL_PASSWORD)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError(f"{path}.ssl_keyfile: ssl_certfile and ssl_keyfile go together")


@dataclasses.dataclass(frozen=True)
class TopicsConfig:
    otlp_spans: str = topics.OTLP_SPANS
    otlp_logs: str = topics.OTLP_LOGS
    otlp_metrics: str = topics.OTLP_METRICS
    nimlogs: str = topics.RAW_NIMLOGS
    scrapes: str = topics.RAW_SCRAPES
    observations: str = topics.RAW_OBSERVATIONS
    deployments: str = topics.DEPLOYMENTS
    calls: str = topics.AUDIT_CALLS
    actions: str = topics.AUDIT_ACTIONS
    audit_deployments: str = topics.AUDIT_DEPLOYMENTS
    samples: str = topics.AUDIT_SAMPLES
    findings: str = topics.AUDIT_FINDINGS
    spans: str = topics.AUDIT_SPANS
    digests: str = topics.AUDIT_DIGESTS
    dlq: str = topics.DLQ
    processor_state: str = topics.PROCESSOR_STATE  # compacted: the joiner's changelog
    log_events: str = topics.LOG_EVENTS  # log lines that became no record, kept for replay
    processor_evidence: str = topics.PROCESSOR_EVIDENCE
    processor_evidence_state: str = topics.PROCESSOR_EVIDENCE_STATE  # compacted

    def audit(self) -> dict[str, str]:
        """Record kind -> the audit topic that carries it."""
        return {"model_call": self.calls, "tool_action": self.actions,
                "deployment": self.audit_deployments, "metric_sample": self.samples,
                "finding": self.findings, "span": self.spans}


@dataclasses.dataclass(frozen=True)
class FilelogTarget:
    include: tuple[str, ...] = ()
    deployment: str = ""
    exclude: tuple[str, ...] = ()
    start_at: str = "beginning"  # for files already there at the first start: beginning | end
    format: str = "auto"  # auto | cri | docker | raw (runtime framing to remove)
    poll_interval: Duration = Duration(0.25)

    def validate(self, path: str) -> None:
        if not self.include:
            raise ConfigError(f"{path}.include: at least one glob is required")
        if self.start_at not in {"beginning", "end"}:
            raise ConfigError(f"{path}.start_at: expected beginning or end")
        if self.format not in {"auto", "cri", "docker", "raw"}:
            raise ConfigError(f"{path}.format: expected auto, cri, docker or raw")
        if not 0 < self.poll_interval <= 60:
            raise ConfigError(f"{path}.poll_interval: expected a duration between 1ms and 60s")


@dataclasses.dataclass(frozen=True)
class ScrapeTarget:
    url: str = ""
    deployment: str = ""
    interval: Duration = Duration(15)
    timeout: Duration = Duration(5)
    job: str = ""  # empty: "dcgm" for port 9400, else "nim"

    def validate(self, path: str) -> None:
        _validate_polled(self, path)


def _validate_polled(target: "ScrapeTarget | MetadataTarget", path: str) -> None:
    """What every endpoint nimtrail polls on a schedule must satisfy."""
    if not target.url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}.url: expected an http:// or https:// URL")
    if not target.interval > 0:
        raise ConfigError(f"{path}.interval: expected a duration above 0")
    if not target.timeout > 0:
        raise ConfigError(f"{path}.timeout: expected a duration above 0 (it is cut to the interval)")


@dataclasses.dataclass(frozen=True)
class MetadataTarget:
    url: str = ""
    deployment: str = ""
    interval: Duration = Duration(60)
    timeout: Duration = Duration(5)

    def validate(self, path: str) -> None:
        _validate_polled(self, path)


@dataclasses.dataclass(frozen=True)
class BufferConfig:
    """The collector's on-disk buffer for when Kafka cannot take writes."""

    dir: str = ""  # empty: <data_dir>/collector/buffer
    max_bytes: int = 256 * 1024 * 1024  # 0 disables the buffer (clients retry instead)
    segment_bytes: int = 16 * 1024 * 1024

    def validate(self, path: str) -> None:
        if self.max_bytes < 0:
            raise ConfigError(f"{path}.max_bytes: expected 0 (no buffer) or a positive size")
        if self.segment_bytes < 64 * 1024:
            raise ConfigError(f"{path}.segment_bytes: expected at least 65536")


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Bearer tokens the collector's receivers require (docs/collector.md, Security)."""

    tokens_file: str = ""  # one token per line, or YAML token -> sender name; empty: no tokens
    protect_metrics: bool = False  # /metrics needs a token too (/healthz never does)


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """TLS on both collector listeners; with client_ca_file, mutual TLS."""

    cert_file: str = ""  # PEM certificate chain; empty: plain TCP
    key_file: str = ""
    client_ca_file: str = ""  # PEM CA(s) that client certificates must be signed by

    def validate(self, path: str) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(f"{path}.key_file: cert_file and key_file go together")
        if self.client_ca_file and not self.cert_file:
            raise ConfigError(f"{path}.client_ca_file: needs cert_file and key_file (mutual TLS is TLS)")


SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclasses.dataclass(frozen=True)
class KubernetesDiscoveryConfig:
    """Scrape and metadata targets from Services annotated nimtrail.io/scrape: "true"."""

    enabled: bool = False
    namespaces: tuple[str, ...] = ()  # empty: every namespace (needs a ClusterRole)
    api_url: str = "https://kubernetes.default.svc"
    token_file: str = f"{SERVICE_ACCOUNT}/token"  # re-read on every list: tokens rotate
    ca_file: str = f"{SERVICE_ACCOUNT}/ca.crt"  # empty: the system's CAs
    interval: Duration = Duration(30)  # how often Services are listed
    timeout: Duration = Duration(10)
    scrape_interval: Duration = Duration(15)
    metadata_interval: Duration = Duration(60)
    address: str = "dns"  # dns: <name>.<namespace>.svc | cluster_ip: the Service's IP (headless: dns)

    def validate(self, path: str) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"{path}.api_url: expected an http:// or https:// URL")
        if self.address not in ("dns", "cluster_ip"):
            raise ConfigError(f"{path}.address: expected dns or cluster_ip")
        for key in ("interval", "timeout", "scrape_interval", "metadata_interval"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{path}.{key}: expected a duration above 0")
        for i, namespace in enumerate(self.namespaces):
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace):
                raise ConfigError(f"{path}.namespaces[{i}]: {namespace!r} is not a namespace name")


@dataclasses.dataclass(frozen=True)
class CollectorConfig:
    # Loopback unless configured: a collector reachable from other hosts is a choice made
    # with its tokens (collector.auth) and TLS in view, not a default.
    otlp_grpc: HostPort = HostPort("127.0.0.1:4317")
    otlp_http: HostPort = HostPort("127.0.0.1:4318")
    max_body_bytes: int = 16 * 1024 * 1024  # after decompression
    max_line_bytes: int = 1024 * 1024  # longer log lines are cut; the rest goes to the DLQ
    ack_timeout: Duration = Duration(5)  # wait this long for Kafka before using the buffer
    grpc_workers: int = 8
    buffer: BufferConfig = BufferConfig()
    filelog: tuple[FilelogTarget, ...] = ()
    scrape: tuple[ScrapeTarget, ...] = ()
    scrape_file: str = ""  # a YAML/JSON list of scrape targets, re-read when it changes
    nim_metadata: tuple[MetadataTarget, ...] = ()
    kubernetes_discovery: KubernetesDiscoveryConfig = KubernetesDiscoveryConfig()
    auth: AuthConfig = AuthConfig()
    tls: TlsConfig = TlsConfig()

    def validate(self, path: str) -> None:
        if not 1024 <= self.max_line_bytes <= 2 * 1024 * 1024:
            # JSON escaping can grow a line six-fold; a batch must stay under Kafka's 16 MiB.
            raise ConfigError(f"{path}.max_line_bytes: expected between 1024 and 2097152")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"{path}.max_body_bytes: expected at least 1024")
        if not 0 < self.ack_timeout <= 60:
            raise ConfigError(f"{path}.ack_timeout: expected a duration between 1ms and 60s")
        if not 1 <= self.grpc_workers <= 256:
            raise ConfigError(f"{path}.grpc_workers: expected between 1 and 256")


@dataclasses.dataclass(frozen=True)
class ContentConfig:
    """What the processor keeps of prompts, responses and tool arguments. They are always
    hashed; their text is kept only where enabled here, and redacted first."""

    keep_prompts: bool = False
    keep_responses: bool = False
    keep_arguments: bool = False
    redact_patterns: tuple[str, ...] = ()  # extra regular expressions to redact
    # How much of one kept text is scanned and kept; the rest becomes a truncation marker.
    max_text_bytes: int = 65536
    # retention.ms of the raw topics that carry content (otlp_spans, otlp_logs, nimlogs):
    # "auto" is 24h while every keep_* is false and leaves them alone otherwise; a duration
    # sets it always; "broker" leaves them to the broker. See docs/processors.md.
    raw_retention: str = "auto"

    def validate(self, path: str) -> None:
        if not 1024 <= self.max_text_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"{path}.max_text_bytes: expected between 1024 and 16777216")
        if self.raw_retention not in ("auto", "broker"):
            try:
                seconds = Duration.parse(self.raw_retention)
            except ValueError as e:
                raise ConfigError(f"{path}.raw_retention: expected auto, broker or a duration "
                                  f"such as 24h, got {self.raw_retention!r}") from e
            if seconds < 60:
                raise ConfigError(f"{path}.raw_retention: expected at least 1m")
        for i, pattern in enumerate(self.redact_patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"{path}.redact_patterns[{i}]: not a regular expression ({e})") from e


# Room one record may take in an audit message (Kafka's 16 MiB, less the batch's framing).
RECORD_BUDGET = 15 * 1024 * 1024
# The most fields any input record has (records.FIELDS), with room for join-only ones.
_MAX_FIELDS = 48


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """How many bytes one field may take in a record's JSON (an escaped control character
    counts six). Longer values keep a prefix and end in `…truncated, N bytes, sha256:<hex>`
    (see docs/processors.md). Bounded at ingest, so no record can outgrow a Kafka message."""

    name: int = 1024  # identifiers and names: ids, caller, model, tool, service, metric
    text: int = 16 * 1024  # free text: errors, targets, log lines, labels, facts
    content: int = 1024 * 1024  # kept prompts, responses and tool arguments
    depth: int = 8  # nesting of attribute values kept as structure; deeper becomes JSON text

    def validate(self, path: str) -> None:
        for key, most in (("name", 64 * 1024), ("text", 256 * 1024), ("content", 4 * 1024 * 1024)):
            if not 256 <= getattr(self, key) <= most:  # 256: the marker itself must fit
                raise ConfigError(f"{path}.{key}: expected between 256 and {most} bytes")
        if not 1 <= self.depth <= 64:
            raise ConfigError(f"{path}.depth: expected between 1 and 64")
        if 3 * self.content + _MAX_FIELDS * max(self.name, self.text) > RECORD_BUDGET:
            raise ConfigError(f"{path}: three content fields and {_MAX_FIELDS} others at these limits "
                              f"would not fit one Kafka message ({RECORD_BUDGET} bytes)")


@dataclasses.dataclass(frozen=True)
class ClockConfig:
    """How far a time taken from input may stray from when the pipeline received it before
    the receive time replaces it (and a clock_skew finding names what was sent)."""

    max_ahead: Duration = Duration(3600)  # senders' clocks run fast by seconds, not hours
    # 0: the longest warehouse.retention class (a record older than that would be purged on
    # arrival), or 400 days when every class is kept forever.
    max_age: Duration = Duration(0)

    def validate(self, path: str) -> None:
        if self.max_ahead <= 0:
            raise ConfigError(f"{path}.max_ahead: must be longer than 0")


@dataclasses.dataclass(frozen=True)
class ProcessorConfig:
    ops: HostPort = HostPort("127.0.0.1:8701")  # /healthz and /metrics
    group_id: str = "nimtrail-processor"
    # Static group membership: a restarted processor takes its partitions back at once
    # instead of waiting for its old session to time out. Empty: the group id.
    instance_id: str = ""
    # How long the group waits for a member that stopped answering before it hands the
    # input to a standby (Kafka's session.timeout.ms; the broker allows 6 s to 30 min).
    session_timeout: Duration = Duration(45)
    # 0: one member of the group reads all the input and joins it, the others stand by.
    # N: the join is split over N partitions of the evidence topic, and every member of the
    # group normalises and joins its share (processors/partitions.py; docs/scale.md). Fixed
    # for the life of the topics: their partitions place what the state holds.
    partitions: int = 0
    join_window: Duration = Duration(300)
    # A record leaves the join state this long after the time its input states (or its last
    # touch, if earlier), never within a join window of its last touch.
    state_ttl: Duration = Duration(3600)
    # Bounds on the join state, whatever the input rate: past either, the oldest settled
    # records leave first (and, with none left, the oldest unsettled settle early).
    # About 3 KB of Python objects per entry, ~4 KB of the process's RSS: at the defaults
    # the processor stays near 350–430 MB at 5,000 spans/s (docs/processors.md).
    state_max_entries: int = 40_000
    state_max_bytes: int = 32 * 1024 * 1024  # the entries' encoded size, as on the changelog
    # Evidence ids (and tool-call ids) of records that left the state, kept so that a late
    # duplicate changes nothing and a late tool action still finds its call; the oldest are
    # forgotten past this many of each (~30 bytes a key; kept on the changelog too).
    state_forgotten_ids: int = 500_000
    # OTLP messages of ~100 spans: ~5,000 events per batch. A batch's objects (decoded
    # requests, evidence, records, encoded outputs held until Kafka acknowledges them) are
    # ~10 KB a span at their peak: 100 messages a batch peaked ~70 MB higher, at the same CPU.
    # Messages per poll; a batch polls on, without waiting, up to 2 MiB of input
    # (processors/loop.py, BATCH_INPUT_BYTES), so that small messages make batches as large.
    max_poll_records: int = 50
    # How long a poll may wait for more input (up to 1 MiB) before the batch is processed:
    # each batch has a fixed cost (produce, changelog, offsets). Adds up to this much to
    # freshness; 0 (process whatever is there) because the processor's saving is small
    # (docs/processors.md, "Scale and limits").
    batch_wait: Duration = Duration(0)
    address_map: dict[str, str] = dataclasses.field(default_factory=dict)  # ip/cidr -> caller
    content: ContentConfig = ContentConfig()
    limits: LimitsConfig = LimitsConfig()
    clock: ClockConfig = ClockConfig()

    def validate(self, path: str) -> None:
        for key in self.address_map:
            try:
                ipaddress.ip_network(key, strict=False)
            except ValueError as e:
                raise ConfigError(f"{path}.address_map.{key}: expected an IP address or CIDR") from e
        if self.state_ttl < self.join_window:
            raise ConfigError(f"{path}.state_ttl: must not be shorter than join_window")
        if not 1 <= self.session_timeout <= 3600:
            raise ConfigError(f"{path}.session_timeout: expected 1s to 1h (the broker's own limits apply too: "
                              "by default 6s to 30min)")
        for key in ("state_max_entries", "state_max_bytes", "state_forgotten_ids"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{path}.{key}: must be at least 1")
        if not 0 <= self.partitions <= MAX_PARTITIONS:
            raise ConfigError(f"{path}.partitions: expected 0 (one member joins everything) to {MAX_PARTITIONS}")
        _validate_batch_wait(self.batch_wait, f"{path}.batch_wait")


@dataclasses.dataclass(frozen=True)
class RetentionConfig:
    """How long each data class is kept; 0 keeps it forever. See docs/warehouse.md."""
    metadata: Duration = Duration(3 * 365 * 86400)  # calls, actions, findings, old deployment versions
    content: Duration = Duration(30 * 86400)  # prompt_text, response_text, arguments (nulled)
    samples: Duration = Duration(30 * 86400)  # raw metric samples; older ones kept one per series-hour
    samples_rollup: Duration = Duration(365 * 86400)  # the hourly roll-ups are deleted after this
    access_log: Duration = Duration(3 * 365 * 86400)
    interval: Duration = Duration(86400)  # how often the warehouse applies it; 0: only by command


MIN_WAREHOUSE_MEMORY = 128 * 1000 ** 2


@dataclasses.dataclass(frozen=True)
class WarehouseConfig:
    path: str = ""  # empty: <data_dir>/audit.duckdb
    api: HostPort = HostPort("127.0.0.1:8700")
    max_poll_records: int = 2000
    # As processor.batch_wait: each transaction has a fixed cost (statements, COMMIT, ledger
    # entry), most of the warehouse's CPU at moderate rates (BENCHMARKS.md, "Soak").
    batch_wait: Duration = Duration(0.1)
    tokens_file: str = ""  # YAML/JSON: token (or sha256:<hex>) -> role, name; empty: open on loopback
    # Signed ledger digests, written even when idle so that a missing one means something;
    # 0: only at start and shutdown (and no freshness check).
    checkpoint_interval: Duration = Duration(60)
    # A directory the warehouse appends each digest to and never rewrites (a WORM or
    # object-lock mount); verification compares the store with it. Empty: no copy.
    digest_copy_dir: str = ""
    # Addresses (CIDRs) of the authenticating proxies, and of the app behind one, whose
    # person_headers name the person of a request (docs/design.md). Empty: nobody's.
    trusted_proxies: tuple[str, ...] = ()
    person_headers: tuple[str, ...] = PERSON_HEADERS
    retention: RetentionConfig = RetentionConfig()
    # DuckDB's memory: its buffer pool, indexes, uncheckpointed writes and query state stay
    # under memory_limit (DuckDB's own default is 80% of the machine's RAM, and it keeps
    # every block it ever read until then); threads are DuckDB's worker threads, each with
    # its own buffers. See docs/warehouse.md, "Memory".
    # The large tables have no DuckDB index (the warehouse's key index finds their keys),
    # so what DuckDB must hold does not grow with the store: the limit bounds a cache. At
    # 160 MB the warehouse stays under 500 MB of RSS at 5,000 spans/s; a larger cache keeps
    # pages of a large store in memory for queries (docs/warehouse.md, "Memory").
    memory_limit: ByteSize = ByteSize(160 * 1000 ** 2)
    threads: int = 2
    # Shards (docs/scale.md): shard i of `shards` writes the audit partitions p with
    # p % shards == i into its own store, ledger and digests (warehouse/shards.py); shard 0
    # also answers the query API over all of them. `shard` is which one this process is
    # (`nimtrail warehouse --shard I`). One shard is the plain layout: <data_dir>/audit.duckdb.
    shards: int = 1
    shard: int = 0
    # Where shard i's API is, as host:port with {shard} for i, when each shard runs on its own
    # host (a StatefulSet's pods: nimtrail-warehouse-{shard}.<headless service>:8700); every
    # shard then listens on warehouse.api. Empty: one host, shard i > 0 on warehouse.api's port + 10 + i.
    shard_api: str = ""
    # The shards' internal API answers the query front only: a secret both hold (created
    # on first start when empty: <data_dir>/shards/token).
    shard_token_file: str = ""
    # The signing key's directory; empty: <data_dir>/keys. Every shard signs with this one
    # key, so one pinned public key checks them all.
    keys_dir: str = ""

    def validate(self, path: str) -> None:
        if self.max_poll_records < 1:
            raise ConfigError(f"{path}.max_poll_records: must be at least 1")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"{path}.shards: expected between 1 and {MAX_SHARDS}, got {self.shards}")
        if not 0 <= self.shard < self.shards:
            raise ConfigError(f"{path}.shard: expected between 0 and shards - 1 ({self.shards - 1}), "
                              f"got {self.shard}")
        if self.shard_api:
            try:
                HostPort.parse(self.shard_api.replace("{shard}", "0"))
            except ValueError:
                raise ConfigError(f"{path}.shard_api: expected host:port with {{shard}} for the shard's "
                                  f"index, got {self.shard_api!r}") from None
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                networks([cidr])
            except ValueError as e:
                raise ConfigError(f"{path}.trusted_proxies[{i}]: expected an IP address or CIDR, "
                                  f"got {cidr!r}") from e
        _validate_person_headers(self.person_headers, f"{path}.person_headers")
        if self.memory_limit < MIN_WAREHOUSE_MEMORY:
            raise ConfigError(f"{path}.memory_limit: expected at least 128MB (the write-ahead log "
                              "alone holds up to 64 MB until a checkpoint)")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"{path}.threads: expected between 1 and 256")
        _validate_batch_wait(self.batch_wait, f"{path}.batch_wait")


MAX_SHARDS = 64  # a shard is a process with its own file; more would want a cluster, not this
MAX_PARTITIONS = 1024  # processor.partitions: evidence partitions the join is split over


# A poll's wait is added to every record's freshness, and a broker holds a fetch no
# longer than the client's request timeout allows: beyond a second it only hurts.
MAX_BATCH_WAIT = 1.0


def _validate_batch_wait(wait: float, path: str) -> None:
    if not 0 <= wait <= MAX_BATCH_WAIT:
        raise ConfigError(f"{path}: expected between 0s and 1s, got {wait:g}s")


def _validate_person_headers(names: tuple[str, ...], path: str) -> None:
    if not names:
        raise ConfigError(f"{path}: expected at least one header name, such as X-Forwarded-Email")
    for i, name in enumerate(names):
        if not is_header_name(name):
            raise ConfigError(f"{path}[{i}]: {name!r} is not an HTTP header name")


# Finding severities, most severe first (the warehouse ranks them in SQL the same way).
SEVERITIES = ("critical", "high", "medium", "low")


def _validate_url(value: str, path: str) -> None:
    if value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: expected an http:// or https:// URL (or empty: off)")


@dataclasses.dataclass(frozen=True)
class AlertsConfig:
    """Findings pushed to Prometheus Alertmanager and/or a JSON webhook, one alert per
    finding group (docs/warehouse.md, Alerts). Both URLs empty: no alerts."""

    min_severity: str = "high"  # the least severe finding that alerts: critical | high | medium | low
    alertmanager_url: str = ""  # Alertmanager's base URL; alerts go to <url>/api/v2/alerts
    alertmanager_token_file: str = ""  # a bearer token for it (a mounted secret, read at each send)
    webhook_url: str = ""  # each group is POSTed here as JSON
    webhook_token_file: str = ""
    # The app as the alert's reader reaches it, for the link back to the trace; empty:
    # http://127.0.0.1:<app.port>.
    app_url: str = ""
    timeout: Duration = Duration(5)  # per request
    interval: Duration = Duration(2)  # how often newly committed findings are looked at
    retry_max: Duration = Duration(300)  # the longest wait between attempts at a failing receiver

    @property
    def enabled(self) -> bool:
        return bool(self.alertmanager_url or self.webhook_url)

    def validate(self, path: str) -> None:
        if self.min_severity not in SEVERITIES:
            raise ConfigError(f"{path}.min_severity: expected one of {', '.join(SEVERITIES)}")
        for key in ("alertmanager_url", "webhook_url", "app_url"):
            _validate_url(getattr(self, key), f"{path}.{key}")
        if not 0 < self.timeout <= 60:
            raise ConfigError(f"{path}.timeout: expected a duration between 1ms and 60s")
        if not 0 < self.interval <= 3600:
            raise ConfigError(f"{path}.interval: expected a duration between 1ms and 1h")
        if not self.retry_max >= self.interval:
            raise ConfigError(f"{path}.retry_max: must not be shorter than interval")


@dataclasses.dataclass(frozen=True)
class AppConfig:
    address: str = "127.0.0.1"  # the app has no login of its own: widen only behind one
    port: int = 8501
    api_url: str = ""  # empty: derived from warehouse.api
    # Behind an authenticating proxy on this host: the person is read from person_headers
    # and passed on to the query API. Only with `address` on loopback, so that nothing
    # but the proxy can reach the app and set them (docs/design.md).
    trusted_proxy: bool = False
    person_headers: tuple[str, ...] = PERSON_HEADERS

    def validate(self, path: str) -> None:
        _validate_person_headers(self.person_headers, f"{path}.person_headers")
        if self.trusted_proxy and not _is_loopback(self.address):
            raise ConfigError(f"{path}.trusted_proxy: needs {path}.address on loopback (127.0.0.1 or "
                              f"::1), got {self.address!r}: a client reaching the app directly could "
                              "name any person")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclasses.dataclass(frozen=True)
class ListenerConfig:
    """Bounds on every network listener: the collector's OTLP/HTTP and gRPC ports, the
    warehouse's query API, each stage's /healthz + /metrics (nimtrail/http_listener.py)."""

    read_timeout: Duration = Duration(30)  # a request's headers and body, from its first byte
    idle_timeout: Duration = Duration(60)  # a kept-alive connection waiting for its next request
    max_connections: int = 256  # per listener; past it new connections get 503 at once

    def validate(self, path: str) -> None:
        for key in ("read_timeout", "idle_timeout"):
            if not 0 < getattr(self, key) <= 3600:
                raise ConfigError(f"{path}.{key}: expected a duration between 1ms and 1h")
        if not 1 <= self.max_connections <= 65536:
            raise ConfigError(f"{path}.max_connections: expected between 1 and 65536")


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: str = ".nimtrail"
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    collector: CollectorConfig = CollectorConfig()
    processor: ProcessorConfig = ProcessorConfig()
    warehouse: WarehouseConfig = WarehouseConfig()
    app: AppConfig = AppConfig()
    listeners: ListenerConfig = ListenerConfig()
    alerts: AlertsConfig = AlertsConfig()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def collector_path(self) -> Path:
        """The collector's local state: file read offsets and the on-disk buffer."""
        return self.data_path / "collector"

    @property
    def buffer_path(self) -> Path:
        d = self.collector.buffer.dir
        return Path(d) if d else self.collector_path / "buffer"

    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse.path) if self.warehouse.path else self.data_path / "audit.duckdb"

    @property
    def api_url(self) -> str:
        if self.app.api_url:
            return self.app.api_url.rstrip("/")
        host = self.warehouse.api.host
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{host}:{self.warehouse.api.port}"


# ---- loading --------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             Duration: "a duration such as 15s", HostPort: "host:port",
             ByteSize: "a size such as 256MB"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "a mapping"
    return "a list"


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {_coerce(key_tp, k, f"{path}.{k}"): _coerce(value_tp, v, f"{path}.{k}")
                for k, v in value.items()}
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(item_tp, item, f"{path}[{i}]") for i, item in enumerate(value))
    try:
        if tp in (Duration, HostPort, ByteSize):
            return tp.parse(value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except ValueError as e:
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}") from e
    raise ConfigError(f"{path}: unsupported type {tp!r}")  # a bug in a config class


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key (known keys: {', '.join(sorted(fields))})")
    values = {k: _coerce(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(path or "config")
    return obj


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    """Turn NIMTRAIL_A__B=value into {"a": {"b": value}}; values are read as YAML scalars."""
    tree: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or name.startswith("NIMTRAIL_TEST_"):
            continue
        keys = name[len(ENV_PREFIX):].lower().split("__")
        if not _names_a_key(Config, keys):
            # The environment is shared with other programs (wrapper scripts set their own
            # NIMTRAIL_ variables): a name that is no config key is not ours to refuse.
            log.warning("%s names no configuration key; ignored", name)
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another NIMTRAIL_ variable")
        node[keys[-1]] = value
    return tree


def _names_a_key(cls: type, keys: list[str]) -> bool:
    """Whether the path of keys leads to a field of the config classes (a mapping-typed
    field takes any keys below it: its own validation judges them)."""
    tp: Any = cls
    for key in keys:
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return True
        hints = typing.get_type_hints(tp)
        if key not in hints:
            return False
        tp = hints[key]
    return True


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_strings(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Environment values for string keys stay strings even when YAML reads `123` as int."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out[key] = _resolve_strings(tp, value)
        elif tp in (str, HostPort) and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML file; errors name the file and say what it was meant to be."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from e
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    `path` (or NIMTRAIL_CONFIG) names the YAML file; without one the defaults apply.
    Errors name the file (or the environment variable) and the key.
    """
    env = dict(os.environ if env is None else env)
    path = path or env.get("NIMTRAIL_CONFIG") or None
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        source = str(path)
        loaded = read_yaml(path, "the config file")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        data = loaded
    try:
        data = _build(Config, data, "") and data
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    overrides = _resolve_strings(Config, _env_overrides(env))
    try:
        return _build(Config, _merge(data, overrides), "")
    except ConfigError as e:
        raise ConfigError(f"{source} with NIMTRAIL_* environment overrides: {e}") from e


def as_dict(config: Any) -> Any:
    """The configuration as plain data (for `nimtrail check` and child processes)."""
    if dataclasses.is_dataclass(config):
        return {f.name: as_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple):
        return [as_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: as_dict(v) for k, v in config.items()}
    if isinstance(config, Duration):
        return float(config)
    if isinstance(config, HostPort):
        return str(config)
    if isinstance(config, ByteSize):
        return int(config)
    return config


def build_section(tp: Any, value: Any, path: str) -> Any:
    """Validate `value` as config type `tp` (e.g. a list of ScrapeTarget read from a targets
    file) with the same errors as load(), naming `path`."""
    return _coerce(tp, value, path)
