"""A warehouse seeded from one simulator run, for the app's tests.

The simulator plays its built-in fleet (incident and upgrade included) back to back, its
spans going through the real OpenTelemetry SDK into an in-memory exporter; the spans are
encoded as the OTLP exporter would send them and turned into records by the processor's
own pure core (`processors.pipeline`: normalisers, joiner, deployment matching, policy
findings). The fleet's deployment records come from the files the simulator writes (Helm
values, /v1/metadata, governance), through the same registration code as `nimtrail
deployments register`, each revision valid from its rollout. Everything is written to a real warehouse store. This takes a few seconds where
the full Kafka pipeline takes a minute, and the pipeline itself is tested elsewhere
(tests/test_simulator_pipeline.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import simulator
from nimtrail import records
from nimtrail.deployments import files, versions
from processors import normalize
from processors.pipeline import Pipeline
from simulator import scenario as scenario_mod
from warehouse.store import Store

SEED = 5
DURATION = 40.0  # simulated seconds: the incident at 6 s, the 70B upgrade at 20 s
RATE = 3.0
REGISTERED_BEFORE = dt.timedelta(hours=1)  # the fleet's first versions predate the traffic


def play(out_dir: Path) -> tuple[simulator.Simulation, list]:
    exporter = InMemorySpanExporter()
    sim = simulator.run(scenario_mod.load(), simulator.Options(
        out_dir=out_dir, seed=SEED, duration=DURATION, rate=RATE, realtime=False,
        span_exporter=exporter))
    return sim, list(exporter.get_finished_spans())


def registered(out_dir: Path, scenario=None) -> list[dict[str, Any]]:
    """Every revision the run rolled out, registered as `nimtrail deployments register`
    would: values + metadata of each revision, the governance file with the first."""
    scenario = scenario or scenario_mod.load()
    existing: list[dict[str, Any]] = []
    for spec in scenario.deployments:
        directory = out_dir / "deployments" / spec.namespace / spec.name
        rollouts = json.loads((directory / "rollouts.json").read_text())
        for i, rollout in enumerate(rollouts):
            n = rollout["revision"]
            paths = [directory / f"values-r{n}.yaml", directory / f"metadata-r{n}.json"]
            if i == 0:
                paths.append(directory / "governance.yaml")
            valid_from = versions.parse_time(rollout["rolled_out_at"]) - (REGISTERED_BEFORE if i == 0 else dt.timedelta())
            for outcome in versions.plan(files.group(paths, spec.id), existing, now=records.now_iso(),
                                         valid_from=versions.iso(valid_from)):
                if outcome.changed:
                    existing.append(outcome.record)
    return existing


def processed(spans: list, deployments: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """What the processor makes of these spans (as one OTLP request) with these deployments
    registered: model calls joined to their deployment version, tool actions joined to
    their calls, and the policy findings."""
    pipeline = Pipeline()
    for record in deployments:
        pipeline.deployment(records.encode_batch("deployment", [record]), passthrough=False)
    now = time.time()
    pipeline.handle(normalize.SPANS, encode_spans(spans).SerializeToString(), now)
    pipeline.sweep(now + 24 * 3600)  # everything has waited out its join window
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, batch in pipeline.take().records.items():
        out[kind].extend(batch)
    return out


def seed(store: Store, out_dir: Path) -> dict[str, Any]:
    """Play the simulator, write what it produced to `store`; returns the incident."""
    sim, spans = play(out_dir)
    deployments = registered(out_dir, sim.scenario)
    found = processed(spans, deployments)
    store.write(store.frames({"deployment": deployments, "model_call": found["model_call"],
                              "tool_action": found["tool_action"], "finding": found["finding"],
                              "span": found["span"]}), [])
    assert sim.incident, "the simulator's run had no incident"
    return {**sim.incident, "counts": dict(sim.counts)}
