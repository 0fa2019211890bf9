"""Soak: the whole pipeline (collector, processor, warehouse as real processes) under a
steady span rate for a long time, then the processor killed and restarted.

    python -m bench --soak [--minutes 30] [--rate 5000] [--bootstrap HOST:PORT]
                           [--set processor.join_window=30s ...]

Load: export requests of 16 agent traces (96 spans: invoke_agent, chat + NIM llm_request,
execute_tool, MCP client and server) sent over OTLP/HTTP at `rate` spans/s. Generating
spans with the SDK costs more CPU than the pipeline spends on them, so a few requests are
recorded once as templates whose trace, span, response and tool-call ids all start with a
marker; each send replaces the marker with the send's sequence number (same length, so
the protobuf stays valid), which makes every sent trace new.

Freshness: twice a second a probe trace is recorded with the SDK at the current time and
sent; a probe is fresh once the warehouse's trace-back finds its call (sent → queryable).

Every minute it prints, and keeps: each stage's RSS; the probes' freshness p50 / p99;
spans/s sent, evidence/s the processor joined and records/s the warehouse wrote; events
per CPU second (spans sent over the CPU time of the three stages); the processor's join
state (entries, encoded bytes) and what left it. At the end it kills the processor with
SIGKILL, restarts it, and reports how long the restart took to read its state back and
how large that state was. The result goes to bench/results/<time>-soak.json.

With --standby a second processor stands by (`nimtrail processor --instance-id …`), and
half-way through, under the same load, the one reading the input is SIGKILLed instead:
the result says when the standby read the input again (the group's session timeout plus
its restore), what freshness was meanwhile, and whether every probe still arrived.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import re
import signal
import threading
import time
import types
from pathlib import Path
from typing import Callable
from unittest import mock

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.resources import Resource

from nimtrail import kafka_io
from bench.pipeline import (TRACES_PER_REQUEST, _get, cpu_seconds, start_warehouses, status_mb, wait_settled,
                            warehouse_urls)
from tests import scenarios as sc
from cli.supervisor import processor_children
from tests.harness import Env, scrape, wait_for

MARK = b"\x9e\x37\x79\xb9"  # the first 4 bytes of every trace and span id in a template
MARK_HEX = b"c0ffee5a"  # the first 8 hex digits of every response and tool-call id in one
TEMPLATES = 8
PROBES_PER_S = 2.0
PROBE_CALLER = "probe"
PROBE_SLACK = dt.timedelta(seconds=5)  # look a little before the oldest pending probe's start


class _MarkedIds(IdGenerator):
    def __init__(self) -> None:
        self.n = 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    def generate_span_id(self) -> int:
        return int.from_bytes(MARK + self._next().to_bytes(4, "big"), "big")

    def generate_trace_id(self) -> int:
        return int.from_bytes(MARK + self._next().to_bytes(12, "big"), "big")


class _MarkedWorld(sc.World):
    def __init__(self, ids: _MarkedIds) -> None:
        super().__init__()
        self.ids = ids

    def tracer(self, service: str, **resource):
        key = repr((service, sorted(resource.items())))
        if key not in self._providers:
            provider = TracerProvider(resource=Resource.create({"service.name": service, **resource}),
                                      id_generator=self.ids)
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self._providers[key] = provider
        return self._providers[key].get_tracer("nimtrail-soak")


def templates(now: dt.datetime) -> list[tuple[bytes, int]]:
    """(OTLP request, spans) with marked ids, TRACES_PER_REQUEST agent traces each."""
    ids, counter = _MarkedIds(), [0]

    def marked_uuid4():
        counter[0] += 1
        # The counter first: a tool-call id keeps only the first 16 hex digits, and must
        # stay unique within a request, or one call would be joined to every trace's action.
        return types.SimpleNamespace(hex=MARK_HEX.decode() + f"{counter[0]:08x}" + "0" * 16)

    out = []
    with mock.patch.object(sc, "uuid", types.SimpleNamespace(uuid4=marked_uuid4)):
        for t in range(TEMPLATES):
            world = _MarkedWorld(ids)
            for i in range(TRACES_PER_REQUEST):
                sc.agent_run(world, now + dt.timedelta(milliseconds=i), caller=f"user{(t * 16 + i) % 50}",
                             gate=("policy", "human", "none")[i % 3])
            spans = world.take()
            body = sc.World.otlp(spans)
            if body.count(MARK_HEX) < TRACES_PER_REQUEST or body.count(MARK) < len(spans):
                raise RuntimeError("a template's ids do not carry the marker")
            if len(set(re.findall(rb"chatcmpl-tool-[0-9a-f]{16}", body))) < TRACES_PER_REQUEST:
                raise RuntimeError("a template's traces share a tool-call id")
            out.append((body, len(spans)))
    return out


def _instance(body: bytes, sequence: int) -> bytes:
    return body.replace(MARK, sequence.to_bytes(4, "big")).replace(MARK_HEX, b"%08x" % sequence)


# -- reading the stages -----------------------------------------------------------------

def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k == prefix or k.startswith(prefix + "{"))


def _pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))] if values else None


# -- the run ----------------------------------------------------------------------------

class _Probes:
    """Probe traces sent at the current time; each one's freshness once it is queryable.

    One query a round finds every probe that arrived (the probes' calls, newest first, since
    the oldest one still pending): asking for each pending probe by id made the warehouse's
    load grow with the backlog itself — at 25 s of freshness, ~50 queries a second, each with
    its access-log write, which slowed the warehouse and so grew the backlog further."""

    def __init__(self, env: Env):
        self.env = env
        self.world = sc.World()
        self.sent: dict[str, float] = {}
        self.started: dict[str, dt.datetime] = {}  # the probe call's start: where to look from
        self.fresh: list[tuple[float, float]] = []  # (when it became queryable, seconds)
        self._lock = threading.Lock()

    def make(self) -> tuple[str, bytes]:
        start = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        ids = sc.agent_run(self.world, start, caller=PROBE_CALLER)
        with self._lock:
            self.started[ids["call_id"]] = start
        return ids["call_id"], sc.World.otlp(self.world.take())

    def sent_at(self, call_id: str, at: float) -> None:
        with self._lock:
            self.sent[call_id] = at

    def poll(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._lock:
                pending = set(self.sent)
                since = min((self.started[c] for c in pending), default=None)
            if since is not None:
                try:
                    rows = _get(self.env, "calls", caller=PROBE_CALLER, limit=1000,
                                since=(since - PROBE_SLACK).isoformat() + "Z")["rows"]
                except OSError:
                    rows = []  # the warehouse is busy: ask again
                now = time.monotonic()
                with self._lock:
                    for call_id in pending & {row["call_id"] for row in rows}:
                        self.started.pop(call_id, None)
                        self.fresh.append((now, now - self.sent.pop(call_id)))
            stop.wait(0.25)  # each look is a query: keep the warehouse's load from them small

    def since(self, t: float) -> list[float]:
        with self._lock:
            return [s for at, s in self.fresh if at >= t]


def soak(work: Path, bootstrap: str, minutes: float, rate: float, say: Callable[[str], None],
         overrides: dict[str, dict] | None = None, standby: bool = False) -> dict:
    (work / "soak").mkdir(parents=True, exist_ok=True)
    env = Env(work / "soak", bootstrap, **(overrides or {}))
    bodies = templates(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    spans_per_request = bodies[0][1]
    say(f"  soak: {minutes:g} min at {rate:,.0f} spans/s ({spans_per_request} spans per request, "
        f"{len(bodies)} templates), probes at {PROBES_PER_S:g}/s")
    _register_deployment(env)
    pids = start_warehouses(env)  # (each shard, with --set warehouse.shards=M)
    for stage in ("processor", "collector"):
        pids[stage] = env.start(stage).pid
        env.wait_ready(stage, timeout=120)
    ops = f"http://127.0.0.1:{env.ports['ops']}/metrics"
    failover = _Failover(env, pids, say) if standby else None
    probes = _Probes(env)
    stop = threading.Event()
    poller = threading.Thread(target=probes.poll, args=(stop,), daemon=True)
    sent_spans = [0]
    minutes_out: list[dict] = []
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=60)

    def post(body: bytes) -> None:
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the collector answered {response.status}")

    def snapshot() -> dict:
        p = failover.metrics() if failover else scrape(ops)
        w: dict[str, float] = {}  # every shard's, added up
        for url in warehouse_urls(env):
            for name, value in scrape(f"{url}/metrics").items():
                w[name] = w.get(name, 0.0) + value
        return {"t": time.monotonic(), "sent": sent_spans[0], "cpu": {s: cpu_seconds(pid) for s, pid in pids.items()},
                "joined": _sum(p, "nimtrail_processor_joined_evidence_total"),
                "written": _sum(w, "nimtrail_warehouse_written_records_total"),
                "evicted": _sum(p, "nimtrail_processor_evicted_entries_total"),
                "early": _sum(p, "nimtrail_processor_settled_early_records_total"),
                "entries": p.get("nimtrail_processor_state_entries"), "bytes": p.get("nimtrail_processor_state_bytes"),
                # what of the warehouse's RSS is accounted for: DuckDB's buffers and the key index
                "duckdb": _sum(w, "nimtrail_warehouse_duckdb_memory_bytes"),
                "key_index": w.get("nimtrail_warehouse_key_index_bytes")}

    def report(before: dict, after: dict, minute: int) -> dict:
        span = after["t"] - before["t"]
        cpu = sum(after["cpu"].values()) - sum(before["cpu"].values())
        fresh = probes.since(before["t"])
        sent = after["sent"] - before["sent"]
        row = {"minute": minute, "rss_mb": {s: status_mb("VmRSS", pid) for s, pid in pids.items()},
               # RSS less the shared libraries' code and other file pages: the stage's own
               "anon_mb": {s: status_mb("RssAnon", pid) for s, pid in pids.items()},
               "fresh_p50_ms": None if not fresh else _pct(fresh, 0.5) * 1000,
               "fresh_p99_ms": None if not fresh else _pct(fresh, 0.99) * 1000, "probes": len(fresh),
               "spans_in_per_s": sent / span, "evidence_out_per_s": (after["joined"] - before["joined"]) / span,
               "records_written_per_s": (after["written"] - before["written"]) / span,
               "events_per_cpu_s": sent / cpu if cpu else None,
               "cpu_s": {s: after["cpu"][s] - before["cpu"][s] for s in pids},
               "state_entries": after["entries"], "state_bytes": after["bytes"],
               "evicted": after["evicted"] - before["evicted"], "settled_early": after["early"] - before["early"],
               "warehouse_duckdb_mb": after["duckdb"] / 1e6, "warehouse_key_index_mb": (after["key_index"] or 0) / 1e6}
        rss = " ".join(f"{s} {v or 0:,.0f}" for s, v in row["rss_mb"].items())
        say(f"  min {minute:>3}: RSS MB {rss} | fresh p50 {row['fresh_p50_ms'] or 0:,.0f} ms "
            f"p99 {row['fresh_p99_ms'] or 0:,.0f} ms ({len(fresh)} probes) | in {row['spans_in_per_s']:,.0f} spans/s, "
            f"out {row['evidence_out_per_s']:,.0f} evidence/s, {row['records_written_per_s']:,.0f} records/s | "
            f"{row['events_per_cpu_s'] or 0:,.0f} events/CPU-s | state {row['state_entries'] or 0:,.0f} entries "
            f"{(row['state_bytes'] or 0) / 1e6:,.1f} MB, evicted {row['evicted']:,.0f}, "
            f"settled early {row['settled_early']:,.0f} | warehouse DuckDB {row['warehouse_duckdb_mb']:,.0f} MB, "
            f"key index {row['warehouse_key_index_mb']:,.0f} MB")
        return row

    try:
        poller.start()
        began = time.monotonic()
        end = began + minutes * 60
        last = snapshot()
        next_report = began + 60
        next_probe = began
        sequence = 0
        while (now := time.monotonic()) < end:
            if now >= next_probe:
                call_id, body = probes.make()
                at = time.monotonic()
                post(body)
                probes.sent_at(call_id, at)
                sent_spans[0] += 6
                next_probe += 1 / PROBES_PER_S
            due = began + sent_spans[0] / rate
            if now < due:
                time.sleep(min(due - now, max(0.0, next_probe - now), 0.05))
            else:
                body, spans = bodies[sequence % len(bodies)]
                sequence += 1
                post(_instance(body, sequence))
                sent_spans[0] += spans
            if failover is not None:
                failover.step(began + minutes * 30)
            if time.monotonic() >= next_report:
                current = snapshot()
                minutes_out.append(report(last, current, len(minutes_out) + 1))
                last, next_report = current, next_report + 60
        if time.monotonic() - last["t"] > 5:  # the last part-minute
            minutes_out.append(report(last, snapshot(), len(minutes_out) + 1))
        if failover is not None:
            restart = failover.result()
            # Every probe sent before, during and after the failover arrives: nothing lost.
            try:
                wait_for(lambda: not probes.sent, timeout=300, interval=1.0, what="every probe to be queryable")
            except AssertionError:
                pass  # reported as probes_unseen
            say(f"  failover: {len(probes.sent)} probes not queryable after the load stopped and the backlog drained")
        else:
            restart = _restart(env, pids, ops, say)
    finally:
        stop.set()
        conn.close()
        env.stop_all()
    fresh_all = [s for _, s in probes.fresh]
    out = {"minutes": minutes, "rate_spans_per_s": rate, "spans_sent": sent_spans[0], "per_minute": minutes_out,
           "fresh_p50_ms": None if not fresh_all else _pct(fresh_all, 0.5) * 1000,
           "fresh_p99_ms": None if not fresh_all else _pct(fresh_all, 0.99) * 1000,
           "probes_unseen": len(probes.sent), "restart": restart,
           "peak_rss_mb": {s: max((m["rss_mb"][s] or 0) for m in minutes_out) for s in pids} if minutes_out else {}}
    say(f"  soak: {sent_spans[0]:,} spans; freshness p50 {out['fresh_p50_ms'] or 0:,.0f} ms, "
        f"p99 {out['fresh_p99_ms'] or 0:,.0f} ms; peak RSS MB {out['peak_rss_mb']}")
    return out


def _register_deployment(env: Env) -> None:
    """The governance record of the NIM the traces name, as an install has one: without
    it every call is also an `unknown_deployment` finding, a row more per call."""
    topic = env.config.topics.deployments
    kafka_io.ensure_topics(env.config, [], compacted=[topic])
    record = sc.deployment("prod/llama-3-1-8b", 1, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    key, value = sc.deployment_message(record)
    producer = kafka_io.producer(env.config)
    producer.send(topic, key=key, value=value).get(timeout=30)
    producer.close()


class _Failover:
    """A standby beside the processor; at `at`, SIGKILL whichever reads the input and time
    how long until the other does (its /metrics: nimtrail_processor_active_members)."""

    def __init__(self, env: Env, pids: dict[str, int], say: Callable[[str], None]):
        self.env, self.pids, self.say = env, pids, say
        [(name, args)] = processor_children(env.config, 2)[1:]
        pids["standby"] = env.start("processor", args=tuple(args), log_name="standby").pid
        self.ops = dict(zip(("processor", "standby"), wait_settled(env, 2)))
        self.last: dict[str, dict[str, float]] = {}  # each member's latest /metrics
        self.killed: str | None = None
        self.killed_at = self.took_over = None
        self.next_look = 0.0

    def _states(self) -> dict[str, float | None]:
        return {name: scrape(url).get("nimtrail_processor_active_members") for name, url in self.ops.items()}

    def metrics(self) -> dict[str, float]:
        """The two processors' /metrics as one: counters summed (the killed one's as it last
        answered), everything else the one reading the input's."""
        for name, url in self.ops.items():
            if scraped := scrape(url):
                self.last[name] = scraped
        merged: dict[str, float] = {}
        for scraped in self.last.values():
            for key, value in scraped.items():
                if key.split("{")[0].endswith("_total"):
                    merged[key] = merged.get(key, 0.0) + value
        reading = next((m for name, m in self.last.items()
                        if name != self.killed and m.get("nimtrail_processor_active_members") == 1), {})
        return {**{k: v for k, v in reading.items() if not k.split("{")[0].endswith("_total")}, **merged}

    def step(self, at: float) -> None:
        now = time.monotonic()
        if self.killed is None and now >= at:
            self.metrics()  # what the one to be killed has counted, up to now
            self.killed = next(name for name, state in self._states().items() if state == 1)
            os.kill(self.pids[self.killed], signal.SIGKILL)
            self.killed_at = time.monotonic()
            self.say(f"  failover: SIGKILL {self.killed} (reading the input)")
        elif self.killed is not None and self.took_over is None and now >= self.next_look:
            self.next_look = now + 0.2
            survivor = "standby" if self.killed == "processor" else "processor"
            if scrape(self.ops[survivor]).get("nimtrail_processor_active_members") == 1:
                self.took_over = now - self.killed_at
                self.say(f"  failover: {survivor} reads the input {self.took_over:.1f}s after the kill")

    def result(self) -> dict:
        survivor = "standby" if self.killed == "processor" else "processor"
        log = self.env.log(survivor)
        restored = re.findall(r"Restored (\d+) join state entries from \S+ in ([\d.]+)s", log)
        self.pids.pop(self.killed, None)
        return {"killed": self.killed, "took_over_s": self.took_over,
                "session_timeout_s": float(self.env.config.processor.session_timeout),
                "restored_entries": int(restored[-1][0]) if restored else None,
                "restore_read_s": float(restored[-1][1]) if restored else None}


def _restart(env: Env, pids: dict[str, int], ops: str, say: Callable[[str], None]) -> dict:
    """SIGKILL the processor and start it again: how long until it reads the input again
    (its state restored), and its state."""
    before = scrape(ops)
    os.kill(pids["processor"], signal.SIGKILL)
    for p in env.processes:
        if p.pid == pids["processor"]:
            p.wait()
    started = time.monotonic()
    pids["processor"] = env.start("processor").pid
    env.wait_ready("processor", timeout=600)
    after = wait_for(lambda: (lambda m: m if m.get("nimtrail_processor_active_members") == 1 else None)(scrape(ops)),
                     timeout=600, interval=0.2, what="the restarted processor to read the input again")
    ready = time.monotonic() - started
    # What this start restored: one line per evidence partition with processor.partitions.
    since_start = env.log("processor").rsplit(" in group ", 1)[-1]
    restored = re.findall(r"Restored (\d+) join state entries from \S+ in ([\d.]+)s", since_start)
    out = {"entries_before_kill": before.get("nimtrail_processor_state_entries"),
           "bytes_before_kill": before.get("nimtrail_processor_state_bytes"),
           "restored_entries": sum(int(count) for count, _s in restored) if restored else None,
           "restore_read_s": after.get("nimtrail_processor_restore_seconds"),
           "start_to_ready_s": ready, "state_bytes": after.get("nimtrail_processor_state_bytes"),
           "rss_mb_after": status_mb("VmRSS", pids["processor"])}
    say(f"  restart after SIGKILL: {out['restored_entries']} entries ({(out['state_bytes'] or 0) / 1e6:,.1f} MB "
        f"encoded) read back in {out['restore_read_s'] or 0:.1f}s; ready {ready:.1f}s after start; "
        f"RSS {out['rss_mb_after'] or 0:,.0f} MB (before the kill: {out['entries_before_kill'] or 0:,.0f} entries)")
    return out

