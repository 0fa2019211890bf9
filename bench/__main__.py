"""End-to-end benchmark: raw limits, the whole pipeline, and the queries, in one run.

    python -m bench                # < 15 minutes: 1M calls for the queries
    python -m bench --quick        # < 3 minutes, small sizes
    python -m bench --full         # queries at 10M model calls
    python -m bench --bootstrap 127.0.0.1:19092   # an existing broker instead of a bundled one
    python -m bench --soak [--minutes 30] [--rate 5000]   # steady load, then a processor restart
    python -m bench --soak --standby ...                  # a standby, and a failover half-way
    python -m bench --scale        # the pipeline with 1, 2 and 3 processors in the group, and 2 warehouse shards
    python -m bench --redaction    # only redaction: MB/s and CPU seconds on adversarial text

Writes bench/results/<timestamp>.json and the table in BENCHMARKS.md (with the machine
description and each figure's ratio to its raw limit). See bench/raw.py (the limits),
bench/pipeline.py (end to end, freshness, RSS) and bench/warehouse_bench.py (queries).
The soak (bench/soak.py) writes bench/results/<timestamp>-soak.json only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import orjson
import yaml

from bench import pipeline, raw, report, stages
from cli import broker

SIZES = {
    "quick": {"kafka_msgs": 2000, "arrow_rows": 100_000, "traces": 1500, "log_calls": 300,
              "fresh_s": 5, "calls": 100_000, "requests": 20, "stage_traces": 300, "stage_records": 20_000},
    "default": {"kafka_msgs": 6000, "arrow_rows": 1_000_000, "traces": 8000, "log_calls": 2000,
                "fresh_s": 10, "calls": 1_000_000, "requests": 100, "stage_traces": 2000,
                "stage_records": 100_000},
}
RATES = (1000, 5000, 15000)  # spans/s; the targets: p99 ≤ 1 s up to 5,000, ≤ 2 s at 15,000


def machine() -> dict:
    import duckdb
    import kafka
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) // 1024 for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), None)
    return {"nproc": os.cpu_count(), "memory_mb": mem, "cpu": cpu, "python": platform.python_version(),
            "duckdb": duckdb.__version__, "kafka_python": kafka.__version__, "kafka_broker": broker.kafka_version(),
            "load_average_at_start": os.getloadavg()}


@contextlib.contextmanager
def kafka(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, int | None]]:
    """The broker's bootstrap and process id: --bootstrap's (pid unknown), or a bundled one
    started for the run."""
    if args.bootstrap:
        yield args.bootstrap, None
        return
    data = work / "kafka"
    handle = broker.start(data, port=0, timeout=180)
    try:
        yield handle.bootstrap, handle.pid
    finally:
        broker.stop(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument("--full", action="store_true", help="queries at 10M model calls")
    parser.add_argument("--bootstrap", default="", help="use this broker instead of starting one")
    parser.add_argument("--work", help="directory for the files (default: a temporary one)")
    parser.add_argument("--skip", action="append", default=[], choices=["raw", "pipeline", "stages", "queries"])
    parser.add_argument("--soak", action="store_true", help="steady load for --minutes at --rate, then a restart")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (default 30)")
    parser.add_argument("--rate", type=float, default=5000.0, help="soak spans per second (default 5000)")
    parser.add_argument("--standby", action="store_true",
                        help="soak with a standby processor; half-way, SIGKILL the one reading the input")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config key for the soak's or --scale's stages, e.g. processor.batch_wait=0.05")
    parser.add_argument("--scale", action="store_true",
                        help="only the pipeline, with 1, 2 and 3 processors in the group (results JSON only)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--scale, --split-state: rounds of every layout (default 3)")
    parser.add_argument("--layouts", type=layouts_arg, default=LAYOUTS, metavar="NxM[/pP],...",
                        help="--scale: the layouts, the first the baseline (default 1x1,1x1/p6,2x1/p6,3x1/p6,3x2/p6)")
    parser.add_argument("--split-state", action="store_true",
                        help="only the join in process, one joiner against the split, at the caps and with room "
                             "(no broker; results JSON)")
    parser.add_argument("--redaction", action="store_true",
                        help="only the redaction benchmark (no broker; results JSON, BENCHMARKS.md untouched)")
    args = parser.parse_args()
    if args.soak:
        return soak_main(args)
    if args.scale:
        return scale_main(args, args.layouts)
    if args.redaction:
        redaction()
        return
    if args.split_state:
        return split_state_main(args)
    size = dict(SIZES["quick" if args.quick else "default"])
    if args.full:
        size.update(calls=10_000_000, requests=50)
    work = Path(args.work or tempfile.mkdtemp(prefix="nimtrail-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    began = time.monotonic()
    out: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "mode": "quick" if args.quick else ("full" if args.full else "default"),
                 "machine": machine(), "sizes": size}
    out["broker"] = "shared" if args.bootstrap else "bundled"
    with kafka(args, work) as (bootstrap, broker_pid):
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        sample, spans = pipeline._traces(pipeline.TRACES_PER_REQUEST, now)
        body = sample[0][0]
        out["request"] = {"bytes": len(body), "spans": spans}
        if "raw" not in args.skip:
            say(f"raw limits (messages of {len(body):,} bytes = one export request of {spans} spans):")
            out["raw_kafka_python"] = r = raw.kafka_python(bootstrap, body, size["kafka_msgs"])
            say(f"  kafka-python: produce {r['produce_msgs_per_s']:,.0f} msg/s, consume {r['consume_msgs_per_s']:,.0f}"
                f" msg/s, produce+consume {r['produce_consume_msgs_per_s']:,.0f} msg/s")
            out["raw_kafka_java"] = r = raw.java_tools(bootstrap, len(body), size["kafka_msgs"])
            say(f"  Kafka perf tools: {r}")
            out["raw_duckdb"] = r = raw.duckdb_arrow(work, size["arrow_rows"])
            say(f"  DuckDB Arrow insert: {r['rows_per_s']:,.0f} rows/s ({r['rows']:,} rows, one frame)")
        if "pipeline" not in args.skip:
            say("pipeline (collector + processor + warehouse processes):")
            out["sustained"] = pipeline.sustained(work, bootstrap, size["traces"], size["log_calls"], say,
                                                  broker_pid=broker_pid)
            out["freshness"] = [pipeline.freshness(work, bootstrap, rate, size["fresh_s"], say) for rate in RATES]
        if "stages" not in args.skip:
            say("stages alone, in this process:")
            out["processor_alone"] = stages.processor_alone(bootstrap, work, size["stage_traces"], say)
            out["warehouse_alone"] = stages.warehouse_alone(work, size["stage_records"], say)
    if "queries" not in args.skip:
        from bench.warehouse_bench import bench_queries
        say(f"queries at {size['calls']:,} model calls, {size['requests']} requests each, over HTTP:")
        out["queries"] = bench_queries(work, size["calls"], size["requests"], say)
    out["seconds"] = time.monotonic() - began
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{out['started'][:19].replace(':', '')}-{out['mode']}.json"
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    table = report.markdown(out)
    report.update(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", out["mode"], table)
    say(table)
    say(f"wrote {path} and BENCHMARKS.md in {out['seconds']:.0f}s")


def write_result(out: dict, mode: str) -> Path:
    """bench/results/<start time>-<mode>.json, beside the other runs' results."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{out['started'][:19].replace(':', '')}-{mode}.json"
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return path


def overrides(settings: list[str]) -> dict[str, dict]:
    """`section.key=value` settings as config sections (values read as YAML: 5000 → int)."""
    out: dict[str, dict] = {}
    for setting in settings:
        path, sep, value = setting.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {setting}: expected SECTION.KEY=VALUE")
        out.setdefault(section, {})[key] = yaml.safe_load(value)
    return out


# (processors, warehouse shards, evidence partitions the join is split over; 0: not split)
LAYOUTS = ((1, 1, 0), (1, 1, 6), (2, 1, 6), (3, 1, 6), (3, 2, 6))


def layouts_arg(text: str) -> tuple[tuple[int, int, int], ...]:
    """'1x1,2x1/p6': (processors, shards, partitions) for each."""
    out = []
    for item in text.split(","):
        group, _, partitions = item.partition("/p")
        n, _, m = group.partition("x")
        try:
            out.append((int(n), int(m), int(partitions or 0)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected processors x shards, e.g. 2x1/p6") from None
    return tuple(out)


def scale_main(args: argparse.Namespace, layouts: tuple[tuple[int, int, int], ...] = LAYOUTS) -> None:
    """The default run's pipeline load through one processor joining everything, and 1, 2
    and 3 processors sharing the join over six evidence partitions, and through two
    warehouse shards: events/s end to end and CPU per event of every process (every member,
    every shard and the broker included).

    A shared machine's speed drifts by a fifth between minutes, more than the differences
    measured; so the layouts run in `--rounds` rounds (every other one in reverse order),
    each layout's CPU per event is compared with the first layout's of the same round,
    and the medians over the rounds are reported."""
    from bench import pipeline
    size = SIZES["quick" if args.quick else "default"]
    work = Path(args.work or tempfile.mkdtemp(prefix="nimtrail-scale-"))
    say = lambda m: print(m, flush=True)  # noqa: E731
    out: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "mode": "scale",
                 "machine": machine(), "sizes": size, "broker": "shared" if args.bootstrap else "bundled",
                 "settings": args.set, "rounds": args.rounds, "runs": {}}
    names = [f"{n}x{m}" + (f"/p{p}" if p else "") for n, m, p in layouts]
    with kafka(args, work) as (bootstrap, broker_pid):
        # The broker's JVM spends its first minute compiling: its CPU for the first layout
        # run was up to four times that of later ones. One run at the quick size, not kept.
        n, m, p = layouts[0]
        say("warm-up (not counted):")
        quick = SIZES["quick"]
        pipeline.sustained(work / "warm-up", bootstrap, quick["traces"], quick["log_calls"], say, broker_pid,
                           processors=n, warehouse_shards=m, partitions=p, overrides=overrides(args.set))
        for round_ in range(args.rounds):
            order = list(zip(names, layouts))
            for name, (n, m, p) in order if round_ % 2 == 0 else reversed(order):
                say(f"round {round_ + 1}: {n} processor{'s' if n > 1 else ''}"
                    + (f" sharing {p} evidence partitions" if p else "")
                    + f", {m} warehouse shard{'s' if m > 1 else ''}:")
                out["runs"].setdefault(name, []).append(pipeline.sustained(
                    work / f"round{round_}", bootstrap, size["traces"], size["log_calls"], say, broker_pid,
                    processors=n, warehouse_shards=m, partitions=p, overrides=overrides(args.set)))
    out["summary"] = scale_summary(out["runs"])
    say("processors x shards/partitions | events/s end to end | CPU µs per event (every process) | "
        "against the first | against one member | processors' CPU s | batches | state changes | "
        "evidence through the topic | warehouse CPU s | transactions   (medians; ratios paired within each round)")
    for name, row in out["summary"].items():
        say(f"{name:>30} | {row['events_per_s']:>19,.0f} | {row['cpu_us_per_event']:>33,.1f} | "
            f"{row['against_first']:>17.2f} | "
            + (f"{row['against_one_member']:>18.2f}" if row["against_one_member"] else " " * 18)
            + f" | {row['processor_cpu_s']:>17.1f} | {row['processor_batches']:>7,.0f} | "
            f"{row['state_changes']:>13,.0f} | {row['evidence_sent_away']:>26,.0f} | {row['warehouse_cpu_s']:>15.1f} | "
            f"{row['warehouse_transactions']:>12,.0f}")
    say(f"wrote {write_result(out, 'scale')}")


def scale_summary(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Each layout's medians over the rounds. `against_first` pairs each run with the first
    layout's run of the same round (one processor joining everything, by default);
    `against_one_member` with one processor holding every partition of the same split
    (`1x1/pP`): what adding members costs, which is what predicts scaling on more cores."""
    first = next(iter(runs.values()))

    def per_event(run: dict) -> float:
        return 1e6 / run["events_per_cpu_s_all"]

    def against(rounds: list[dict], base: list[dict]) -> float:
        return statistics.median(per_event(a) / per_event(b) for a, b in zip(rounds, base))

    out = {}
    for name, rounds in runs.items():
        one_member = runs.get("1x1/p" + name.partition("/p")[2]) if "/p" in name else None
        out[name] = {
            "events_per_s": statistics.median(r["events_per_s"] for r in rounds),
            "cpu_us_per_event": statistics.median(per_event(r) for r in rounds),
            "against_first": against(rounds, first),
            "against_one_member": against(rounds, one_member) if one_member else None,
            "processor_cpu_s": statistics.median(
                sum(v for k, v in r["cpu_s"].items() if k.startswith("processor")) for r in rounds),
            "processor_batches": statistics.median(r["processor_batches"] for r in rounds),
            "state_changes": statistics.median(r["state_changes"] for r in rounds),
            # (runs before members counted it have none)
            "evidence_sent_away": statistics.median(sum(r.get("evidence_sent_away", {}).values()) for r in rounds),
            "warehouse_cpu_s": statistics.median(
                sum(v for k, v in r["cpu_s"].items() if k.startswith("warehouse")) for r in rounds),
            "warehouse_transactions": statistics.median(r["warehouse_transactions"] for r in rounds),
        }
    return out


def soak_main(args: argparse.Namespace) -> None:
    from bench import soak
    work = Path(args.work or tempfile.mkdtemp(prefix="nimtrail-soak-"))
    say = lambda m: print(m, flush=True)  # noqa: E731
    out: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "mode": "soak",
                 "machine": machine(), "settings": args.set}
    out["broker"] = "shared" if args.bootstrap else "bundled"
    with kafka(args, work) as (bootstrap, broker_pid):
        out["soak"] = soak.soak(work, bootstrap, args.minutes, args.rate, say, overrides(args.set), args.standby)
    say(f"wrote {write_result(out, 'soak')}")


def split_state_main(args: argparse.Namespace) -> None:
    from bench import split_state
    say = lambda m: print(m, flush=True)  # noqa: E731
    out = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "mode": "split-state",
           "machine": machine(), "rounds": args.rounds, **split_state.run(args.rounds, say)}
    say(f"wrote {write_result(out, 'split-state')}")


def redaction() -> None:
    from bench import redaction_bench
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = {"started": started, "mode": "redaction", "machine": machine(), "rows": redaction_bench.run()}
    print(f"wrote {write_result(out, 'redaction')}", flush=True)


if __name__ == "__main__":
    main()
