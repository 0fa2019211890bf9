"""Normalise a batch of NIM log lines (nimtrail.raw.nimlogs) into what they say:

- request lifecycle lines (`Received request <id>`, `Finished request <id>`, `Aborted ...`)
  → model_call evidence from `log.nim` (the id is the response id, e.g. `chatcmpl-…`);
- uvicorn access lines (peer, route, status) → model_call evidence from `log.access` when
  they can be tied to exactly one request, else kept as log events; health probes counted;
- a gateway's JSON access line naming request id and caller → evidence from `log.gateway`;
- vLLM stats lines (`Avg prompt throughput: ...`) → metric_sample records;
- startup lines (`Valid profile`, `Selected profile`, `Profile metadata`, API and engine
  versions; read by nimtrail/deployments/startup_log.py) → one deployment observation per batch, in the nimtrail.raw.observations format;
- lines no shape fits → kept as log events and counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from nimtrail import records
from nimtrail.deployments.startup_log import StartupFacts
from nimtrail.records import sha256_hex
from processors import evidence as ev
from processors.clock import TEXT, UNIX_NANO, Clock, default_clock
from processors.content import ContentPolicy, digest
from processors.evidence import Evidence
from processors.nimlog_lines import Line, iso, parse, parse_iso

_ACCESS = re.compile(r'^(?P<peer>\S+) - "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})\b')
_RECEIVED = re.compile(r"^(?:Received|Added) request (?P<id>[^\s:]+):?(?P<rest>.*)$", re.S)
_PROMPT = re.compile(r"""prompt: (?P<q>['"])(?P<prompt>.*?)(?P=q), params:""", re.S)
_TOKEN_IDS = re.compile(r"prompt_token_ids: \[(?P<ids>[\d, ]*)\]")
_FINISHED = re.compile(r"^(?P<what>Finished|Aborted) request (?P<id>\S+?)\.?\s*$")
_STATS = re.compile(r"^(?:Engine (?P<engine>\d+): )?Avg prompt throughput: (?P<prompt>[\d.]+) tokens/s, "
                    r"Avg generation throughput: (?P<gen>[\d.]+) tokens/s(?P<rest>.*)$")
_STAT_ITEM = re.compile(r"(?P<name>[A-Za-z][A-Za-z ]*?): (?P<value>[\d.]+) ?(?P<unit>reqs|%)?(?=,|$)")
_INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")

# Gateway access logs: a JSON object naming the request and who sent it.
_GATEWAY_ID = ("response_id", "request_id", "x_request_id", "upstream_request_id")
_GATEWAY_CALLER = ("user", "enduser", "caller", "consumer")
_GATEWAY_ADDRESS = ("client_ip", "remote_addr", "client_address")
_GATEWAY_SERVICE = ("client_service", "service", "app")


@dataclasses.dataclass
class NimlogResult:
    evidence: list[Evidence] = dataclasses.field(default_factory=list)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    observation: dict[str, Any] | None = None
    log_events: dict[str, Any] | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # line kind -> lines


def _first(doc: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((doc[n] for n in names if doc.get(n) not in (None, "")), None)


def _stat_metric(name: str, unit: str | None) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if unit == "reqs":
        return f"nim_log:{base}_requests"
    return f"nim_log:{base}_ratio" if unit == "%" else f"nim_log:{base}"


class _Batch:
    def __init__(self, doc: dict[str, Any], policy: ContentPolicy, identities: list[str] | None = None,
                 clock: Clock | None = None):
        self.doc = doc
        self.policy = policy
        self.clock = clock or default_clock()
        # The clock's findings before the current line, and whether the line stored its time
        # (a line only counted, like a health probe, needs no finding).
        self.raised = 0
        self.stored = False
        self.source = str(doc.get("source") or "")
        self.deployment = doc.get("deployment") or None
        self.identities = [f"dep:{self.deployment}"] if self.deployment else []
        self.identities += [i for i in identities or () if i not in self.identities]
        self.received = parse_iso(doc.get("received_at"))
        self.out = NimlogResult()
        self.events: list[dict[str, Any]] = []
        self.startup_facts = StartupFacts()
        self.facts_at: str | None = None
        # Request ids named by lifecycle lines since the last inference access line: an
        # access line names no request, so it is tied only when exactly one is in question.
        self.since_access: list[str] = []
        self.tied: set[str] = set()

    def count(self, kind: str) -> None:
        self.out.counts[kind] = self.out.counts.get(kind, 0) + 1

    def line_id(self, item: dict[str, Any], text: str) -> str:
        if item.get("offset") is not None:
            return f"{self.source}|{self.doc.get('file') or ''}|{item['offset']}"
        return sha256_hex(f"{self.source}|{item.get('time') or item.get('observed') or ''}|{text}")[:32]

    def keep(self, kind: str, item: dict[str, Any], text: str, when: str | None, **extra: Any) -> None:
        self.count(kind)
        self.stored = True
        self.events.append({"kind": kind, "text": text, "time": when, "offset": item.get("offset"),
                            **extra})

    def call(self, source: str, call_id: str, eid: str, **fields: Any) -> None:
        fields["call_id"] = call_id
        fields["identities"] = self.identities
        self.stored = True
        self.clock.name_subject(self.raised, call_id)
        self.out.evidence.append(Evidence(ev.MODEL_CALL, call_id, source, eid, fields))

    def line(self, item: dict[str, Any]) -> None:
        self.raised, self.stored = len(self.clock.findings), False
        self.read(item)
        if not self.stored:
            del self.clock.findings[self.raised:]

    def read(self, item: dict[str, Any]) -> None:
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            self.count("empty")
            return
        runtime = parse_iso(item.get("time"))
        # `observed` (when a shipper read the line) stands in for the batch's receive time.
        received = parse_iso(item.get("observed")) or self.received
        reference = runtime or received
        parsed = parse(text, reference) if reference else None
        if parsed is None:
            self.keep("unparsed", item, text, None, reason="no timestamp")
            return
        if parsed.shape == "plain" and item.get("level"):
            # A logger's message without the logger's framing (what an OpenTelemetry log
            # bridge exports: the level and time travel beside it).
            parsed = Line("message", str(item["level"]), None, text.rstrip("\r\n"))
        when = iso(runtime) if runtime else parsed.time or (iso(received) if received else None)
        if when is not None and not self.clock.low <= when <= self.clock.high:
            # As sent: an OTLP record's nanoseconds, else the time read from the line.
            sent, sent_as = ((item["time_unix_nano"], UNIX_NANO) if runtime and item.get("time_unix_nano")
                             else (item.get("time") if runtime else when, TEXT))
            when = self.clock.clamp(when, sent, sent_as, "log_line", self.line_id(item, text), "time")
        if parsed.shape == "json":
            self.gateway(item, text, parsed.fields or {}, when)
            return
        message = parsed.message
        if parsed.shape == "plain":
            self.keep("unparsed", item, text, when, reason="unknown line shape")
            return
        eid = self.line_id(item, text)
        if match := _ACCESS.match(message):
            self.access(item, text, match, when, eid)
        elif match := _RECEIVED.match(message):
            rest = match.group("rest")
            prompt = _PROMPT.search(rest)
            token_ids = _TOKEN_IDS.search(rest)
            prompt_text = prompt.group("prompt") if prompt else None
            self.lifecycle(match.group("id"))
            self.count("request")
            self.call(ev.LOG_NIM, match.group("id"), eid, started_at=when,
                      prompt_sha256=digest(prompt_text), prompt_text=self.policy.keep_prompt(prompt_text),
                      input_tokens=len(token_ids.group("ids").split(",")) if token_ids and
                      token_ids.group("ids").strip() else None)
        elif match := _FINISHED.match(message):
            self.lifecycle(match.group("id"))
            self.count("request")
            fields = {"ended_at": when}
            if match.group("what") == "Aborted":
                fields["status"] = "aborted"
            self.call(ev.LOG_NIM, match.group("id"), eid, **fields)
        elif match := _STATS.match(message):
            self.stats(match, when)
        elif self.startup(message, when):
            self.count("startup")
        else:
            self.count("other")

    def lifecycle(self, request_id: str) -> None:
        if request_id not in self.since_access:
            self.since_access.append(request_id)

    def access(self, item: dict[str, Any], text: str, match: re.Match, when: str | None, eid: str) -> None:
        path = match.group("path").split("?", 1)[0]
        peer = match.group("peer")
        address = peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
        status = int(match.group("status"))
        if path.startswith("/v1/health") or path in ("/health", "/metrics", "/v1/metrics"):
            self.count("health")
            return
        if path not in _INFERENCE_PATHS:
            self.keep("access", item, text, when, client_address=address, path=path, http_status=status)
            return
        candidates = [r for r in self.since_access if r not in self.tied]
        self.since_access = []
        if len(candidates) != 1:
            self.keep("access", item, text, when, client_address=address, path=path, http_status=status)
            return
        self.tied.add(candidates[0])
        self.count("access_tied")
        self.call(ev.LOG_ACCESS, candidates[0], eid, client_address=address, http_status=status)

    def gateway(self, item: dict[str, Any], text: str, doc: dict[str, Any], when: str | None) -> None:
        call_id = _first(doc, _GATEWAY_ID)
        caller = _first(doc, _GATEWAY_CALLER)
        address = _first(doc, _GATEWAY_ADDRESS)
        key = doc.get("api_key")
        if not call_id or not (caller or address or key or doc.get("api_key_fingerprint")):
            self.keep("unparsed", item, text, when, reason="JSON line of an unknown shape")
            return
        self.count("gateway")
        status = doc.get("status", doc.get("status_code"))
        self.call(ev.LOG_GATEWAY, str(call_id), self.line_id(item, text),
                  caller=str(caller) if caller else None,
                  client_address=str(address) if address else None,
                  client_service=_first(doc, _GATEWAY_SERVICE),
                  api_key_fingerprint=(sha256_hex(str(key))[:16] if key
                                       else doc.get("api_key_fingerprint")),
                  http_status=int(status) if isinstance(status, (int, float)) or
                  (isinstance(status, str) and status.isdigit()) else None)

    def stats(self, match: re.Match, when: str | None) -> None:
        self.count("stats")
        self.stored = True
        labels = {"source": self.source}
        if match.group("engine"):
            labels["engine"] = match.group("engine")
        values = [("nim_log:avg_prompt_throughput_tokens_per_second", float(match.group("prompt"))),
                  ("nim_log:avg_generation_throughput_tokens_per_second", float(match.group("gen")))]
        for item in _STAT_ITEM.finditer(match.group("rest").rstrip(". ")):
            value = float(item.group("value"))
            unit = item.group("unit")
            values.append((_stat_metric(item.group("name"), unit), value / 100.0 if unit == "%" else value))
        for metric, value in values:
            sample_id = sha256_hex([self.deployment or self.source, metric, labels, when])[:32]
            self.out.samples.append(records.new(
                "metric_sample", sample_id=sample_id, ts=when, deployment_id=self.deployment,
                metric=metric, labels=labels, value=value, version=1))

    def startup(self, message: str, when: str | None) -> bool:
        if not self.startup_facts.add(message):
            return False
        self.facts_at = self.facts_at or when
        self.stored = True
        return True

    def finish(self) -> NimlogResult:
        if self.startup_facts.facts:
            # `lines`: the message that stated each fact, which a drift finding quotes.
            self.out.observation = {
                "deployment": self.deployment, "source": "nim-log", "endpoint": self.source,
                "observed_at": self.facts_at or self.doc.get("received_at"),
                "facts": self.startup_facts.facts, "lines": self.startup_facts.lines}
        if self.events:
            self.out.log_events = {"source": self.source, "deployment": self.deployment,
                                   "file": self.doc.get("file"), "host": self.doc.get("host"),
                                   "received_at": self.doc.get("received_at"), "events": self.events}
        return self.out


def normalise(doc: dict[str, Any], policy: ContentPolicy,
              identities: list[str] | None = None, clock: Clock | None = None) -> NimlogResult:
    """Everything one nimlogs message says. `doc` is the decoded message (raw.decode);
    lines that are not objects are counted as malformed, never raised. `identities` are
    added to the configured deployment's for the calls the lines name (an OTLP resource's
    `k8s:`, `pod:`, `svc:`). A line may carry `observed` (ISO; when it was read: the
    reference for a time without a year, and the time of a line that has none) and `level`
    (its text is then a bare message when no line shape fits). `clock` bounds the lines'
    times: one out of bounds becomes the receive time, with a finding on the line (and
    the call it names)."""
    batch = _Batch(doc, policy, identities, clock)
    lines = doc.get("lines")
    for item in lines if isinstance(lines, list) else ():
        if isinstance(item, dict):
            batch.line(item)
        else:
            batch.count("malformed")
    return batch.finish()
