"""The whole pipeline as real processes: collector → Kafka → processor → Kafka → warehouse.

Traffic has the simulator's shape: agent traces (invoke_agent → chat + NIM llm_request →
execute_tool → MCP client and server; 6 spans, one model call and one tool action each)
exported over OTLP/HTTP and OTLP/gRPC in requests of ~100 spans, plus NIM log lines
(request received/finished pairs, access lines, health probes) tailed by filelog. An
*event* is a span or a log line.

- sustained: every event is sent as fast as the collector accepts it; the clock stops
  when every model call and tool action is queryable through the warehouse API;
- freshness: traces sent at a fixed span rate, each call's emit time kept; the calls
  query is polled and a call's freshness is (first seen queryable) − (sent).
Peak RSS of each stage is its process's VmHWM.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import random
import re
import statistics
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

import duckdb
import orjson

from bench.collector_bench import _send_grpc, _send_http
from tests import scenarios as sc
from cli.supervisor import processor_children, warehouse_children
from warehouse import shards
from tests.harness import Env, scrape, wait_for

SPANS_PER_TRACE = 6
TRACES_PER_REQUEST = 16  # ~100 spans, as an SDK batch exporter sends


def status_mb(field: str, pid: int) -> float | None:
    """A memory figure of /proc/<pid>/status (VmHWM: peak RSS; VmRSS: now; RssAnon: its
    anonymous part) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used so far (utime + stime; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    return status_mb("VmHWM", pid)


def _traces(n: int, start: dt.datetime, rate: float | None = None) -> tuple[list[tuple[bytes, list[str], float]], int]:
    """Export requests as (body, call ids, planned send offset in s)."""
    world, rng = sc.World(), random.Random(7)
    out, spans, ids = [], 0, []
    per_s = (rate / SPANS_PER_TRACE) if rate else None
    for i in range(n):
        offset = i / per_s if per_s else 0.0
        got = sc.agent_run(world, start + dt.timedelta(seconds=offset), caller=f"user{rng.randrange(50)}",
                           gate=rng.choice(["policy", "human", "none"]), mcp=True)
        ids.append(got["call_id"])
        if len(ids) == TRACES_PER_REQUEST or i == n - 1:
            batch = world.take()
            spans += len(batch)
            out.append((sc.World.otlp(batch), ids, offset))
            ids = []
    return out, spans


def nim_log_lines(calls: int, when: dt.datetime, new_id=lambda: uuid.uuid4().hex) -> list[str]:
    """NIM log lines for `calls` requests: the lifecycle pair in 2.x JSON, an access line,
    and a health probe, as a NIM container mixes them."""
    lines = []
    for j in range(calls):
        call = f"chatcmpl-{new_id()}"
        stamp = (when + dt.timedelta(milliseconds=j)).strftime("%Y-%m-%d %H:%M:%S")
        lines += [
            f'{{"level":"INFO","time":"{stamp}","file_name":"logger.py","line_number":39,'
            f'"message":"Received request {call}: params: SamplingParams(n=1, max_tokens=256)"}}',
            f'{{"level":"INFO","time":"{stamp}","file_name":"logger.py","line_number":40,'
            f'"message":"Finished request {call}."}}',
            f'INFO:     10.28.{j % 250}.1:4{j % 10000:04d} - "POST /v1/chat/completions HTTP/1.1" 200 OK',
            'INFO:     10.0.0.2:5000 - "GET /v1/health/ready HTTP/1.1" 200 OK']
    return lines


def warehouse_urls(env: Env) -> list[str]:
    """Each warehouse shard's API (one: the warehouse's)."""
    return [f"http://127.0.0.1:{env.ports['api'] + shards.port_offset(i)}" for i in range(env.config.warehouse.shards)]


def start_warehouses(env: Env) -> dict[str, int]:
    """`nimtrail warehouse` (each `--shard i`, as `up` runs them), ready: {name: pid}."""
    pids = {}
    for i, ((name, args), url) in enumerate(zip(warehouse_children(env.config), warehouse_urls(env))):
        pids["warehouse" if i == 0 else name] = env.start("warehouse", args=tuple(args), log_name=name).pid
        wait_for(lambda url=url: _healthy(f"{url}/healthz"), timeout=120, what=f"warehouse {name}")
    return pids


def _written(env: Env) -> dict[str, float]:
    """Records written per kind, added up over the warehouse's shards."""
    out: dict[str, float] = {}
    for url in warehouse_urls(env):
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            text = r.read().decode()
        for m in re.finditer(r'^nimtrail_warehouse_written_records_total\{kind="(\w+)"\} ([\d.e+]+)$', text, re.M):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _get(env: Env, name: str, **params: object) -> dict:
    url = f"{env.api}/v1/query/{name}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return orjson.loads(r.read())


def _found(env: Env, call_id: str) -> bool:
    return bool(_get(env, "trace-back", call_id=call_id).get("found"))


SENT_AWAY = "nimtrail_processor_sent_away_evidence_total"


def processor_metrics_urls(env: Env, processors: int) -> list[str]:
    """Each member's /metrics, on the ops ports `up --processors` gives them."""
    ops = env.config.processor.ops
    return [f"http://127.0.0.1:{ops.port + k}/metrics" for k in range(processors)]


def _processor_counts(env: Env, processors: int) -> dict[str, float]:
    """Batches delivered and state changes written, added up over the group's members."""
    metrics = [scrape(url) for url in processor_metrics_urls(env, processors)]
    return {"batches": sum(m.get("nimtrail_processor_delivered_batches_total", 0.0) for m in metrics),
            "state_changes": sum(m.get("nimtrail_processor_state_changes_entries_total", 0.0) for m in metrics),
            # Evidence items that went through the evidence topic, by who placed them.
            **{f"sent_away_by_{by}": sum(v for m in metrics for k, v in m.items()
                                         if k.startswith(SENT_AWAY) and f'by="{by}"' in k)
               for by in ("normaliser", "joiner")}}


def _start(env: Env, processors: int = 1) -> dict[str, int]:
    """The stages as processes: {name: pid}. Processors after the first join its group as
    `nimtrail processor --instance-id <id>-k` (standing by, processors/membership.py, or
    sharing the join with processor.partitions);
    warehouse shards after the first are `nimtrail warehouse --shard i` (`warehouse-i`)."""
    pids = start_warehouses(env)
    for stage in ("processor", "collector"):
        pids[stage] = env.start(stage).pid
        env.wait_ready(stage, timeout=120)
    for name, args in processor_children(env.config, processors)[1:]:
        pids[name] = env.start("processor", args=tuple(args), log_name=name).pid
    wait_settled(env, processors)
    return pids


def wait_settled(env: Env, processors: int) -> list[str]:
    """Until one processor of the group reads the input and the others stand by, or with
    processor.partitions each holds a share (the ops ports `up --processors` gives them);
    their /metrics URLs."""
    urls = processor_metrics_urls(env, processors)
    shared = env.config.processor.partitions > 0
    wanted = [1] * processors if shared else [0] * (processors - 1) + [1]
    wait_for(lambda: sorted(scrape(url).get("nimtrail_processor_active_members") for url in urls) == wanted,
             timeout=120, what="the processor group to settle")
    return urls


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _count(env: Env) -> dict[str, int]:
    """Rows of each audit table, and the warehouse transactions that wrote them (one ledger
    entry each), added up over the shards."""
    counts = {"model_calls": 0, "tool_actions": 0, "ledger": 0}
    for config in shards.all_shards(env.config):
        con = duckdb.connect(str(config.warehouse_path), read_only=True)
        try:
            for t in counts:
                counts[t] += con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        finally:
            con.close()
    return counts


def sustained(work: Path, bootstrap: str, traces: int, log_calls: int, say: Callable[[str], None],
              broker_pid: int | None = None, processors: int = 1, warehouse_shards: int = 1,
              partitions: int = 0, overrides: dict | None = None) -> dict:
    """`traces` agent traces over OTLP and `log_calls` calls' NIM log lines through the
    running stages, `processors` of them in the processor group (sharing the join over
    `partitions` evidence partitions, if any), `warehouse_shards` warehouse shards;
    `overrides`: config sections' keys ({"processor": {"batch_wait": 0.05}})."""
    name = ("sustained" + (f"-{processors}" if processors > 1 else "") + (f"-p{partitions}" if partitions else "")
            + (f"-{warehouse_shards}shards" if warehouse_shards > 1 else ""))
    (work / name).mkdir(parents=True, exist_ok=True)
    sections = {k: dict(v) for k, v in (overrides or {}).items()}
    sections.setdefault("collector", {})["filelog"] = [
        {"include": [str(work / name / "*.log.jsonl")], "deployment": "bench/llama", "poll_interval": "20ms"}]
    sections.setdefault("warehouse", {})["shards"] = warehouse_shards
    sections.setdefault("processor", {})["partitions"] = partitions
    env = Env(work / name, bootstrap, **sections)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    requests, spans = _traces(traces, now)
    lines = nim_log_lines(log_calls, now)
    say(f"  {traces:,} traces ({spans:,} spans in {len(requests)} requests) + {len(lines):,} log lines prepared")
    pids = _start(env, processors)
    measured = {**pids, **({"broker": broker_pid} if broker_pid else {})}
    cpu_before = {stage: cpu_seconds(pid) for stage, pid in measured.items()}
    try:
        bodies = [b for b, _, _ in requests]
        half = len(bodies) // 2
        began = time.perf_counter()
        log_path = work / name / "nim.log.jsonl"
        log_path.write_text("\n".join(lines) + "\n")
        senders = [threading.Thread(target=_send_http, args=(env.ports["http"], bodies[:half])),
                   threading.Thread(target=_send_grpc, args=(env.ports["grpc"], bodies[half:]))]
        for s in senders:
            s.start()
        for s in senders:
            s.join()
        accepted = time.perf_counter() - began
        expected = traces + log_calls
        last = [requests[-1][1][-1], requests[half - 1][1][-1]]

        def done() -> bool:
            w = _written(env)
            return (w.get("model_call", 0) >= expected and w.get("tool_action", 0) >= traces
                    and all(_found(env, c) for c in last))

        wait_for(done, timeout=max(120.0, traces / 50), interval=0.2, what="every call queryable")
        elapsed = time.perf_counter() - began
        cpu = {stage: cpu_seconds(pid) - cpu_before[stage] for stage, pid in measured.items()}
        rows = sum(_written(env).values())
        rss = {stage: peak_rss_mb(pid) for stage, pid in pids.items()}
        work_done = _processor_counts(env, processors)
    finally:
        env.stop_all()
    counts = _count(env)
    transactions = counts.pop("ledger")
    events = spans + len(lines)
    out = {"traces": traces, "spans": spans, "log_lines": len(lines), "events": events,
           "collector_accept_s": accepted, "end_to_end_s": elapsed, "events_per_s": events / elapsed,
           "spans_per_s": spans / elapsed, "collector_events_per_s": events / accepted,
           "expected": {"model_calls": expected, "tool_actions": traces}, "found": counts,
           "peak_rss_mb": rss, "request_bytes": statistics.mean(len(b) for b in bodies),
           # Each process's CPU over the run (the last polls of the done() check included).
           "cpu_s": cpu, "rows_written": rows,
           # Added up over the group: the batches each member took through to committed
           # offsets, and the join state entries written to the changelog.
           "processor_batches": work_done["batches"], "state_changes": work_done["state_changes"],
           "evidence_sent_away": {"normaliser": work_done["sent_away_by_normaliser"],
                                  "joiner": work_done["sent_away_by_joiner"]},
           "warehouse_transactions": transactions,
           "events_per_cpu_s": {stage: events / used for stage, used in cpu.items() if used > 0},
           "events_per_cpu_s_all": events / sum(cpu.values())}
    say(f"  sustained: {events:,} events in {elapsed:.1f}s = {events / elapsed:,.0f} events/s end to end "
        f"(collector accepted them in {accepted:.1f}s); rows {counts} of expected {out['expected']}; "
        f"{work_done['batches']:,.0f} processor batches, {work_done['state_changes']:,.0f} state changes, "
        f"{work_done['sent_away_by_normaliser']:,.0f} + {work_done['sent_away_by_joiner']:,.0f} evidence items "
        f"through the evidence topic (normalisers + joiners); "
        f"peak RSS MB {({k: round(v or 0) for k, v in rss.items()})}")
    say("  CPU seconds per stage: " + ", ".join(f"{k} {v:.1f} ({events / v:,.0f} events per CPU s)"
                                               for k, v in cpu.items() if v > 0)
        + f"; all together {out['events_per_cpu_s_all']:,.0f} events per CPU s")
    return out


def freshness(work: Path, bootstrap: str, rate: int, seconds: float, say: Callable[[str], None]) -> dict:
    """Spans at `rate`/s for `seconds`; emit → queryable per call."""
    (work / f"fresh-{rate}").mkdir(parents=True, exist_ok=True)
    env = Env(work / f"fresh-{rate}", bootstrap)
    traces = int(rate * seconds / SPANS_PER_TRACE)
    t0 = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) 
    requests, spans = _traces(traces, t0, rate=rate)
    pids = _start(env)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or len(seen) < len(sent):
            pending = [c for c in sent if c not in seen]
            if stop.is_set() and not pending:
                break
            since = (t0 - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if pending:
                oldest = min(planned[c] for c in pending)
                since = (t0 + dt.timedelta(seconds=oldest - 1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            offset = 0
            while True:
                page = _get(env, "calls", since=since, limit=1000, offset=offset)
                at = time.monotonic()
                for row in page["rows"]:
                    seen.setdefault(row["call_id"], at)
                if page.get("next_offset") is None:
                    break
                offset = page["next_offset"]
            if stop.is_set() and time.monotonic() > give_up:
                break
            time.sleep(0.05)

    planned = {c: off for _, ids, off in requests for c in ids}
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=60)
    give_up = float("inf")
    poller = threading.Thread(target=poll, daemon=True)
    try:
        poller.start()
        began = time.monotonic()
        for body, ids, offset in requests:
            delay = began + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            at = time.monotonic()
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            for c in ids:
                sent[c] = at
        give_up = time.monotonic() + 60
        stop.set()
        poller.join(timeout=90)
        rss = {stage: peak_rss_mb(pid) for stage, pid in pids.items()}
    finally:
        stop.set()
        conn.close()
        env.stop_all()
    lags = sorted((seen[c] - sent[c]) * 1000 for c in sent if c in seen)
    pct = lambda q: lags[min(len(lags) - 1, int(q * (len(lags) - 1)))] if lags else None  # noqa: E731
    out = {"rate_spans_per_s": rate, "seconds": seconds, "calls": len(sent), "seen": len(lags),
           "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": lags[-1] if lags else None, "peak_rss_mb": rss}
    say(f"  freshness at {rate:,} spans/s for {seconds:.0f}s: {len(lags)}/{len(sent)} calls seen, "
        f"p50 {out['p50_ms'] or 0:,.0f} ms, p99 {out['p99_ms'] or 0:,.0f} ms")
    return out
