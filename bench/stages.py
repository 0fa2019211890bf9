"""Each stage's CPU per event, alone and in the pipeline, for `python -m bench`'s stage table.

Alone (in this process, on the run's broker):
  - processor: `bench.processor_bench`'s mix through normalise + join in process (below the
    join state's caps, and with it full: records settle early and leave, as under load),
    and the processor end to end with its state full (consume, normalise, join, produce,
    changelog, commit), beside a raw kafka-python consume + produce of the same messages;
  - warehouse: `bench.ingest_bench` (decode, convert, hash, insert, ledger and offsets in
    one transaction per poll), beside a raw DuckDB Arrow insert of the same rows.
In the pipeline: each stage process's CPU seconds over the sustained run (bench/pipeline.py)
per event it moved. Events per CPU second are what stays stable on a shared machine and
what predicts scaling on more cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench import ingest_bench, processor_bench
from nimtrail import config as config_mod
from processors import service


def processor_alone(bootstrap: str, work: Path, traces: int, say: Callable[[str], None]) -> dict:
    service.tune_gc()  # as the processor stage runs
    messages, events = processor_bench.workload(traces)
    batch = config_mod.ProcessorConfig().max_poll_records  # input messages per take, as the stage reads
    cap = processor_bench.full_state_cap(messages)
    pure_s, pure_cpu = processor_bench.bench_pure(messages, batch)
    _full_state_s, full_state_cpu = processor_bench.bench_pure(messages, batch, cap)
    raw_s, full_s, full_cpu = processor_bench.through_kafka(bootstrap, work / "processor-alone", messages, cap)
    out = {"events": events, "messages": len(messages),
           "pure_events_per_s": events / pure_s, "pure_events_per_cpu_s": events / pure_cpu,
           "full_state_events_per_cpu_s": events / full_state_cpu,
           "events_per_s": events / full_s, "events_per_cpu_s": events / full_cpu,
           "raw_events_per_s": events / raw_s}
    say(f"  processor alone: {out['events_per_s']:,.0f} events/s, {out['events_per_cpu_s']:,.0f} events per CPU s "
        f"(normalise + join only: {out['pure_events_per_cpu_s']:,.0f}, with the join state full: "
        f"{out['full_state_events_per_cpu_s']:,.0f}); raw consume + produce of the same "
        f"messages {out['raw_events_per_s']:,.0f} events/s")
    return out


def warehouse_alone(work: Path, records: int, say: Callable[[str], None]) -> dict:
    out = ingest_bench.run(records, 8, work / "warehouse-alone", profile=False, say=lambda m: None)
    say(f"  warehouse alone: {out['ingest_rows_per_s']:,.0f} rows/s, {out['ingest_rows_per_cpu_s']:,.0f} rows per "
        f"CPU s; raw DuckDB Arrow insert of the same rows in chunks of a poll "
        f"{out['raw_chunked_rows_per_cpu_s']:,.0f} rows per CPU s")
    return out
