"""The scale run's world through the join in process: one joiner against the join split
over evidence partitions (one member holding every partition), at the state's caps and with
room for the split's own entries. No broker, no other stage: what the split costs the join
itself, and how much of it is the state's churn at the cap.

    python -m bench --split-state

Each configuration runs in a process of its own (fresh heap), in rounds, every other
round in reverse; CPU per event is compared with the unsplit joiner's of the same round.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from typing import Callable

# (name, evidence partitions, room: the caps times this)
CONFIGS = (("one joiner", 0, 1.0), ("split 6", 6, 1.0), ("split 6, room for its entries", 6, 1.4),
           ("one joiner, no cap", 0, 10.0), ("split 6, no cap", 6, 10.0))
TRACES, LOG_CALLS, MESSAGES_PER_BATCH = 8000, 2000, 50


def one(partitions: int, room: float) -> dict:
    """Run the world once in this process; what it cost and what the state did."""
    from bench import pipeline as world
    from nimtrail.config import ProcessorConfig
    from processors import normalize, service
    from processors.partitions import Partitioned
    from processors.pipeline import Pipeline
    from tests import scenarios as sc

    service.tune_gc()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    requests, spans = world._traces(TRACES, now)
    lines = world.nim_log_lines(LOG_CALLS, now)
    messages = [(normalize.SPANS, body) for body, _, _ in requests]
    messages += [(normalize.NIMLOGS, sc.nimlog_message(lines[i:i + 500], received=now, first_offset=i))
                 for i in range(0, len(lines), 500)]
    default = ProcessorConfig()
    config = ProcessorConfig(state_max_entries=int(default.state_max_entries * room),
                             state_max_bytes=int(default.state_max_bytes * room))
    joined = Partitioned(config, partitions, held=range(partitions)) if partitions else None
    pipe = Pipeline(config, joiner=joined)
    joiners = list(joined.joiners.values()) if joined else [pipe.joiner]
    changes = 0
    started = time.process_time()
    for start in range(0, len(messages), MESSAGES_PER_BATCH):
        at = time.time()
        for kind, value in messages[start:start + MESSAGES_PER_BATCH]:
            pipe.handle(kind, value, at, "bench", at)
        pipe.take()
        changes += sum(len(pipe.joiner_changes(j)) for j in joiners)
    cpu = time.process_time() - started
    registry = pipe.metrics.registry
    evicted = sum(registry.get_sample_value("nimtrail_processor_evicted_entries_total", {"reason": r}) or 0
                  for r in ("max_entries", "max_bytes", "ttl"))
    return {"cpu_s": cpu, "events": spans + len(lines), "state_changes": changes, "evicted": evicted,
            "entries": dict(Counter(e.kind for j in joiners for e in j.entries.values()))}


def run(rounds: int, say: Callable[[str], None]) -> dict:
    runs: dict[str, list[dict]] = {}
    for round_ in range(rounds):
        order = CONFIGS if round_ % 2 == 0 else tuple(reversed(CONFIGS))
        for name, partitions, room in order:
            out = subprocess.run([sys.executable, "-m", "bench.split_state", str(partitions), str(room)],
                                 check=True, capture_output=True, text=True)
            result = json.loads(out.stdout)
            runs.setdefault(name, []).append(result)
            say(f"round {round_ + 1}: {name}: {result['cpu_s']:.2f} CPU s, {result['state_changes']:,} state "
                f"changes, {result['evicted']:,.0f} evicted, entries {result['entries']}")
    base = runs[CONFIGS[0][0]]
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "cpu_us_per_event": statistics.median(1e6 * r["cpu_s"] / r["events"] for r in results),
            "against_one_joiner": statistics.median(r["cpu_s"] / b["cpu_s"] for r, b in zip(results, base)),
            "state_changes": statistics.median(r["state_changes"] for r in results),
            "evicted": statistics.median(r["evicted"] for r in results),
            "entries": sum(results[-1]["entries"].values()),
        }
    say("configuration | CPU µs per event | against one joiner | state changes | evicted | entries at the end  "
        "(medians; ratios paired within each round)")
    for name, row in summary.items():
        say(f"{name:>29} | {row['cpu_us_per_event']:>16.1f} | {row['against_one_joiner']:>18.2f} | "
            f"{row['state_changes']:>13,.0f} | {row['evicted']:>7,.0f} | {row['entries']:>7,}")
    return {"runs": runs, "summary": summary}


if __name__ == "__main__":
    print(json.dumps(one(int(sys.argv[1]), float(sys.argv[2]))))
