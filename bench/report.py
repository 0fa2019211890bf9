"""The benchmark's table for BENCHMARKS.md: each figure next to its raw limit."""

from __future__ import annotations

import re
from pathlib import Path

TARGETS = {"events_per_s": 50_000, "ratio": 0.5, "fresh_p99_ms": 2000, "trace_back_p95_ms": 50,
           "calls_p95_ms": 100, "latency_ms": 500, "rss_mb": 500}


def _n(v, unit: str = "") -> str:
    return "–" if v is None else f"{v:,.0f}{unit}"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Run `{r['mode']}` at {r['started']} with a {r.get('broker', '')} broker, "
             f"{r['seconds']:.0f} s. Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_mb']:,} MB, "
             f"load average at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}; "
             f"Python {m['python']}, DuckDB {m['duckdb']}, kafka-python {m['kafka_python']}, "
             f"Kafka {m['kafka_broker']}.", "",
             "| figure | measured | raw limit | ratio | target |", "|---|---|---|---|---|"]
    req = r.get("request", {})
    kp, kj, dd = r.get("raw_kafka_python"), r.get("raw_kafka_java"), r.get("raw_duckdb")
    spans_per_msg = req.get("spans", 1)
    if kp:
        lines.append(f"| kafka-python produce, {req['bytes']:,} B messages | {_n(kp['produce_msgs_per_s'])} msg/s "
                     f"({_n(kp['produce_mb_per_s'])} MB/s) | Kafka ProducerPerformance {_n(kj.get('produce_msgs_per_s'))} msg/s | "
                     f"{kp['produce_msgs_per_s'] / kj['produce_msgs_per_s']:.2f} | |" if kj and kj.get("produce_msgs_per_s") else
                     f"| kafka-python produce | {_n(kp['produce_msgs_per_s'])} msg/s | – | – | |")
        lines.append(f"| kafka-python consume | {_n(kp['consume_msgs_per_s'])} msg/s | Kafka ConsumerPerformance "
                     f"{_n(kj.get('consume_msgs_per_s') if kj else None)} msg/s | "
                     + (f"{kp['consume_msgs_per_s'] / kj['consume_msgs_per_s']:.2f}" if kj and kj.get("consume_msgs_per_s") else "–")
                     + " | |")
    s = r.get("sustained")
    if s:
        limit = kp["produce_consume_msgs_per_s"] * spans_per_msg if kp else None
        lines.append(f"| end to end, spans + log lines in → queryable | {_n(s['events_per_s'])} events/s "
                     f"({_n(s['spans_per_s'])} spans/s) | kafka-python produce+consume of the same requests "
                     f"{_n(limit)} spans/s | " + (f"{s['events_per_s'] / limit:.2f}" if limit else "–")
                     + " | ≥ 25,000/s, ≥ 0.25 (goal 50,000, 0.5) |")
        lines.append(f"| collector accept (same run) | {_n(s['collector_events_per_s'])} events/s | "
                     f"kafka-python produce {_n(kp['produce_msgs_per_s'] * spans_per_msg if kp else None)} spans/s | "
                     + (f"{s['collector_events_per_s'] / (kp['produce_msgs_per_s'] * spans_per_msg):.2f}" if kp else "–")
                     + " | |")
        found = s["found"]
        lines.append(f"| rows queryable after the sustained run | {found['model_calls']:,} calls, "
                     f"{found['tool_actions']:,} actions | expected {s['expected']['model_calls']:,} / "
                     f"{s['expected']['tool_actions']:,} | | all |")
        for stage, mb in s["peak_rss_mb"].items():
            lines.append(f"| peak RSS {stage} (sustained run) | {_n(mb, ' MB')} | | | ≤ 500 MB |")
    for f in r.get("freshness", []):
        lines.append(f"| freshness at {f['rate_spans_per_s']:,} spans/s, {f['seconds']} s "
                     f"({f['seen']}/{f['calls']} calls seen) | p50 {_n(f['p50_ms'], ' ms')}, p99 {_n(f['p99_ms'], ' ms')} "
                     f"| | | p99 ≤ {'1,000' if f['rate_spans_per_s'] <= 5000 else '2,000'} ms |")
    q = r.get("queries")
    if q:
        for name, v in q["queries"].items():
            target = ("p95 ≤ 50 ms" if name.startswith("trace-back") else "p95 ≤ 100 ms"
                      if name.startswith("calls newest") else "≤ 500 ms" if name == "latency by profile" else "")
            lines.append(f"| {name} at {q['calls']:,} calls | p50 {v['p50_ms']:,.1f} ms, p95 {v['p95_ms']:,.1f} ms "
                         f"| | | {target} |")
    if dd:
        lines.append(f"| (raw) DuckDB Arrow insert, one frame of {dd['rows']:,} calls | {_n(dd['rows_per_s'])} rows/s "
                     f"| | | |")
    lines += stage_table(r)
    return "\n".join(lines)


def _ratio(measured: float | None, limit: float | None) -> str:
    return f"{measured / limit:.2f}" if measured and limit else ""


def stage_table(r: dict) -> list[str]:
    """CPU per event of each stage, in the pipeline (the sustained run) and alone, with
    its ratio to the raw limit of the same run."""
    s, pa, wa = r.get("sustained") or {}, r.get("processor_alone"), r.get("warehouse_alone")
    per_cpu = s.get("events_per_cpu_s", {})
    if not (per_cpu or pa or wa):
        return []
    kp = r.get("raw_kafka_python") or {}
    spans_per_msg = r.get("request", {}).get("spans", 1)
    cpu = s.get("cpu_s", {})
    rows_cpu = s["rows_written"] / cpu["warehouse"] if cpu.get("warehouse") else None
    produce = kp["produce_msgs_per_s"] * spans_per_msg if kp else None
    both = kp["produce_consume_msgs_per_s"] * spans_per_msg if kp.get("produce_consume_msgs_per_s") else None
    lines = ["", "CPU per event by stage: events (spans + log lines) per CPU second of each stage's process, "
             "in the sustained run above and alone in one process on the same broker; the warehouse also "
             "in rows written per CPU second. Ratio: the stage alone (the collector: in the pipeline) over "
             "its raw limit; the Kafka limits are the rates of one Python loop, which keeps about one CPU "
             "busy.", "",
             "| stage | in the pipeline | alone | raw limit (same run) | ratio | target |",
             "|---|---|---|---|---|---|"]
    lines.append(f"| collector | {_n(per_cpu.get('collector'))} events per CPU s | | kafka-python produce "
                 f"{_n(produce)} spans/s | {_ratio(per_cpu.get('collector'), produce)} | CPU per span ≤ the "
                 "OpenTelemetry Collector's, side by side |")
    lines.append(f"| processor | {_n(per_cpu.get('processor'))} events per CPU s | "
                 + (f"{_n(pa['events_per_cpu_s'])} events per CPU s (normalise + join alone "
                    f"{_n(pa['pure_events_per_cpu_s'])}"
                    + (f", with the join state full {_n(pa['full_state_events_per_cpu_s'])}"
                       if "full_state_events_per_cpu_s" in pa else "")
                    + f") | kafka-python consume + produce of its input "
                    f"{_n(pa['raw_events_per_s'])} events/s | {_ratio(pa['events_per_cpu_s'], pa['raw_events_per_s'])}"
                    if pa else " | | ")
                 + " | ≥ 60,000 events per CPU s |")
    lines.append(f"| warehouse | {_n(rows_cpu)} rows per CPU s ({_n(per_cpu.get('warehouse'))} events) | "
                 + (f"{_n(wa['ingest_rows_per_cpu_s'])} rows per CPU s | DuckDB Arrow insert of the same rows, "
                    f"a poll at a time, {_n(wa['raw_chunked_rows_per_cpu_s'])} rows per CPU s | "
                    f"{_ratio(wa['ingest_rows_per_cpu_s'], wa['raw_chunked_rows_per_cpu_s'])}" if wa else " | | ")
                 + " | ≥ 150,000 rows per CPU s |")
    if "broker" in per_cpu:
        lines.append(f"| broker (both passes) | {_n(per_cpu['broker'])} events per CPU s | | | | |")
    if s.get("events_per_cpu_s_all"):
        lines.append(f"| all of them | {_n(s['events_per_cpu_s_all'])} events per CPU s, {_n(s['events_per_s'])} "
                     f"events/s | | kafka-python produce + consume {_n(both)} spans/s | "
                     f"{_ratio(s.get('events_per_s'), both)} | ≥ 25,000 events/s end to end, ≥ 0.25 |")
    return lines


def update(path: Path, mode: str, table: str) -> None:
    """Replace the section of this mode in BENCHMARKS.md (or add it)."""
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- bench:{mode}:begin -->", f"<!-- bench:{mode}:end -->"
    block = f"{begin}\n### `{mode}`\n\n{table}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
