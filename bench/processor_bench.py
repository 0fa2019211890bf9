"""Processor throughput on a realistic mix, against a raw kafka-python baseline.

    python -m bench.processor_bench [--traces 2000] [--bootstrap host:port]

The mix: agent traces (invoke_agent → chat + NIM llm_request → execute_tool → MCP client
and server; 6 spans each) exported in OTLP requests of ~100 spans as an SDK batch exporter
would; NIM log batches (lifecycle, access and health-probe lines, stats lines) for as many
log-only calls; a scrape (gauges and histograms) per 50 traces. An *event* is a span, a log
line or a scraped sample.

Measured in one run, on the same messages:
  1. normalise + join, in process (the pure pipeline, as the service drives it per batch),
     below the state's caps and again with the state full (records settle early and leave,
     the steady state of a processor under load); either way every record is judged once;
  2. a raw kafka-python consume + produce of every message (what any Kafka stage pays);
  3. the processor itself end to end: consume, normalise, join, produce, changelog, commit,
     with the state full.
The broker is NIMTRAIL_BENCH_BOOTSTRAP / --bootstrap, else a bundled one started here.
Besides wall-clock rates, 1. and 3. report events per CPU second of this process, which a
machine shared with other work disturbs far less.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import TopicPartition

from bench.pipeline import nim_log_lines
from cli import broker
from nimtrail import config as config_mod, kafka_io
from processors import normalize, service
from processors.loop import Processor
from processors.pipeline import Pipeline
from tests import corpus, scenarios as sc

SPANS_PER_REQUEST = 100


def workload(traces: int, seed: int = 7) -> tuple[list[tuple[str, bytes]], int]:
    """(messages as (normalize kind, value), number of events)."""
    rng = random.Random(seed)
    world = sc.World()
    messages: list[tuple[str, bytes]] = [(normalize.DEPLOYMENTS, sc.deployment_message(r)[1])
                                         for r in corpus.deployments()]
    events = 0
    pending = []
    start = corpus.T0
    for i in range(traces):
        when = start + dt.timedelta(seconds=i * 0.5)
        sc.agent_run(world, when, caller=f"user{rng.randrange(50)}", link_by_id=rng.random() < 0.8,
                     gate=rng.choice(["policy", "human", "none"]), mcp=rng.random() < 0.7)
        pending += world.take()
        if len(pending) >= SPANS_PER_REQUEST:
            messages.append((normalize.SPANS, sc.World.otlp(pending)))
            events += len(pending)
            pending = []
        if i % 25 == 24:
            lines = nim_log_lines(25, when, lambda: uuid.UUID(int=rng.getrandbits(128)).hex)
            lines.append(f"INFO {when:%m-%d %H:%M:%S} metrics.py:351] Avg prompt throughput: 1.2 tokens/s, "
                         "Avg generation throughput: 30.5 tokens/s, Running: 2 reqs, Swapped: 0 reqs, "
                         "Pending: 0 reqs, GPU KV cache usage: 3.1%, CPU KV cache usage: 0.0%.")
            messages.append((normalize.NIMLOGS, sc.nimlog_message(lines, received=when, first_offset=i * 100_000)))
            events += len(lines)
        if i % 50 == 49:
            samples = [{"name": "vllm:num_requests_running", "labels": {"model_name": sc.MODEL}, "value": 2.0,
                        "timestamp": None}]
            for metric in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                           "request_queue_time_seconds"):
                for le in ("0.01", "0.05", "0.1", "0.5", "1.0", "5.0", "+Inf"):
                    samples.append({"name": f"vllm:{metric}_bucket", "labels": {"model_name": sc.MODEL, "le": le},
                                    "value": float(rng.randrange(100)), "timestamp": None})
                samples += [{"name": f"vllm:{metric}_sum", "labels": {"model_name": sc.MODEL}, "value": 9.5,
                             "timestamp": None},
                            {"name": f"vllm:{metric}_count", "labels": {"model_name": sc.MODEL}, "value": 99.0,
                             "timestamp": None}]
            messages.append((normalize.SCRAPES, sc.scrape_message("http://llama:8000/v1/metrics", when, samples)))
            events += len(samples)
    if pending:
        messages.append((normalize.SPANS, sc.World.otlp(pending)))
        events += len(pending)
    return messages, events


def _feed(pipeline: Pipeline, messages: list[tuple[str, bytes]], batch: int) -> None:
    """The messages through normalise + join, taking outputs and state changes after every
    `batch` of them, with one receive time per batch, as the stage drives its polls."""
    for i, (kind, value) in enumerate(messages):
        if kind == normalize.DEPLOYMENTS:
            pipeline.deployment(value)
        else:
            pipeline.handle(kind, value, float(i // batch))
        if i % batch == batch - 1:
            pipeline.take()
            pipeline.joiner.state_changes()
    pipeline.take()
    pipeline.joiner.state_changes()


def bench_pure(messages: list[tuple[str, bytes]], batch: int,
               state_max_entries: int | None = None) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process). With `state_max_entries`, the
    join state is capped there."""
    processor_config = config_mod.ProcessorConfig()
    if state_max_entries is not None:
        processor_config = dataclasses.replace(processor_config, state_max_entries=state_max_entries)
    pipeline = Pipeline(processor_config)
    started, cpu = time.perf_counter(), time.process_time()
    _feed(pipeline, messages, batch)
    # What has not settled yet settles now: every record is judged once, as a running
    # processor judges it when its join window passes.
    pipeline.sweep(float("inf"))
    pipeline.take()
    pipeline.joiner.state_changes()
    return time.perf_counter() - started, time.process_time() - cpu


def full_state_cap(messages: list[tuple[str, bytes]]) -> int:
    """A join state cap of a quarter of the entries the workload makes. Below its caps
    every record settles once, when its window passes, and stays; at a few thousand
    events a second the default caps hold well under the join window, so the steady
    state of a processor under load (the soaks) is a full state: records settle early,
    in many small groups, and leave with their traces."""
    pipeline = Pipeline(config_mod.ProcessorConfig())
    _feed(pipeline, messages, len(messages))
    return max(1, len(pipeline.joiner.entries) // 4)


def _config(bootstrap: str, data: Path, state_max_entries: int | None = None) -> config_mod.Config:
    suffix = uuid.uuid4().hex[:8]
    base = config_mod.Config()
    topics = {f.name: f"{getattr(base.topics, f.name)}.bench{suffix}"
              for f in dataclasses.fields(base.topics)}
    cap = {"NIMTRAIL_PROCESSOR__STATE_MAX_ENTRIES": str(state_max_entries)} if state_max_entries else {}
    return config_mod.load(None, env={"NIMTRAIL_KAFKA__BOOTSTRAP": bootstrap, "NIMTRAIL_DATA_DIR": str(data),
                                      "NIMTRAIL_PROCESSOR__GROUP_ID": f"bench-{suffix}", **cap,
                                      **{f"NIMTRAIL_TOPICS__{k.upper()}": v for k, v in topics.items()}})


def _load_input(config: config_mod.Config, messages: list[tuple[str, bytes]]) -> None:
    t = config.topics
    topic_of = {normalize.SPANS: t.otlp_spans, normalize.NIMLOGS: t.nimlogs, normalize.SCRAPES: t.scrapes,
                normalize.DEPLOYMENTS: t.deployments}
    kafka_io.ensure_topics(config, [t.otlp_spans, t.nimlogs, t.scrapes, "raw-out." + t.otlp_spans],
                           compacted=[t.deployments])
    producer = kafka_io.producer(config)
    for i, (kind, value) in enumerate(messages):
        producer.send(topic_of[kind], key=str(i % 64).encode(), value=value)
    producer.flush()
    producer.close()


def _partitions(consumer, topic: str) -> set[int]:
    deadline = time.monotonic() + 30
    while not (found := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no metadata for {topic}")
        time.sleep(0.1)
    return found


def bench_raw(config: config_mod.Config, total: int) -> float:
    """Consume every input message (the same topics and partitions the processor reads)
    and produce it again, acknowledged: the floor any Kafka stage in Python pays."""
    t = config.topics
    consumer = kafka_io.consumer(config, group_id=None)
    partitions = [TopicPartition(topic, p) for topic in (t.otlp_spans, t.nimlogs, t.scrapes)
                  for p in sorted(_partitions(consumer, topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    producer = kafka_io.producer(config)
    started = time.perf_counter()
    seen = 0
    deadline = started + 600
    while seen < total:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"raw consumer saw {seen} of {total} messages")
        for _tp, messages in consumer.poll(timeout_ms=200, max_records=500).items():
            for message in messages:
                producer.send("raw-out." + t.otlp_spans, key=message.key, value=message.value)
                seen += 1
        producer.flush()
    elapsed = time.perf_counter() - started
    consumer.close()
    producer.close()
    return elapsed


def bench_processor(config: config_mod.Config, total: int) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process: the loop and the Kafka client's
    threads)."""
    # Timed from before the group hands it the input: joining the group, restoring the (empty)
    # state and reading the deployments are in the figure, as small as they are.
    processor = Processor(config)
    started, cpu = time.perf_counter(), time.process_time()
    seen = 0
    while seen < total:
        if time.perf_counter() > started + 600:
            raise TimeoutError(f"the processor saw {seen} of {total} messages")
        seen += processor.run_once(timeout_ms=200)
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    processor.close()
    return elapsed, used


def through_kafka(bootstrap: str, data: Path, messages: list[tuple[str, bytes]],
                  state_max_entries: int | None = None) -> tuple[float, float, float]:
    """The messages on fresh topics, then (raw consume + produce s, processor end to end s,
    the processor's CPU s), the processor's join state capped at `state_max_entries`."""
    inputs = sum(1 for kind, _ in messages if kind != normalize.DEPLOYMENTS)
    config = _config(bootstrap, data, state_max_entries)
    _load_input(config, messages)
    raw = bench_raw(config, inputs)
    wall, cpu = bench_processor(config, inputs)
    return raw, wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processor_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=config_mod.ProcessorConfig().max_poll_records,
                        help="messages per take(), as processor.max_poll_records (default: its default)")
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs")
    parser.add_argument("--bootstrap", default=os.environ.get("NIMTRAIL_BENCH_BOOTSTRAP", ""))
    args = parser.parse_args(argv)
    service.tune_gc()  # as the processor stage runs

    messages, events = workload(args.traces)
    inputs = [m for m in messages if m[0] != normalize.DEPLOYMENTS]
    size = sum(len(v) for _, v in inputs)
    print(f"workload: {args.traces} agent traces -> {len(inputs)} messages, {events} events, "
          f"{size / 1e6:.1f} MB; best of {args.repeat} runs")
    runs = [bench_pure(messages, args.batch) for _ in range(args.repeat)]
    pure, pure_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"normalise+join (in process): {events / pure:10.0f} events/s  {len(inputs) / pure:8.0f} msg/s"
          f"  {events / pure_cpu:10.0f} events per CPU second")
    cap = full_state_cap(messages)
    runs = [bench_pure(messages, args.batch, cap) for _ in range(args.repeat)]
    full_state, full_state_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"  with its state full:       {events / full_state:10.0f} events/s  {len(inputs) / full_state:8.0f} msg/s"
          f"  {events / full_state_cpu:10.0f} events per CPU second (capped at {cap} entries)")

    with tempfile.TemporaryDirectory() as tmp:
        bootstrap, started_broker = args.bootstrap, False
        if not bootstrap:
            bootstrap, started_broker = broker.start(Path(tmp), port=0).bootstrap, True
        try:
            raw, full, full_cpu = float("inf"), float("inf"), float("inf")
            for run in range(args.repeat):
                raw_s, wall, cpu = through_kafka(bootstrap, Path(tmp) / f"data{run}", messages, cap)
                raw, full, full_cpu = min(raw, raw_s), min(full, wall), min(full_cpu, cpu)
            print(f"raw consume+produce:         {events / raw:10.0f} events/s  {len(inputs) / raw:8.0f} msg/s")
            print(f"processor end to end:        {events / full:10.0f} events/s  {len(inputs) / full:8.0f} msg/s"
                  f"  {events / full_cpu:10.0f} events per CPU second (state full; what it holds at the end "
                  "is not judged yet)")
            print(f"normalise+join throughput / raw consume+produce throughput: {raw / pure:.3f}")
            print(f"processor end to end throughput / raw consume+produce throughput: {raw / full:.3f}")
        finally:
            if started_broker:
                broker.stop(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
