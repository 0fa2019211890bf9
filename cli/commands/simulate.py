"""`nimtrail simulate`: play a NIM fleet and its clients against the pipeline."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cli.commands.common import load


def default_otlp(args: argparse.Namespace) -> str:
    port = load(args).collector.otlp_http.port
    return f"http://127.0.0.1:{port}"


def cmd_simulate(args: argparse.Namespace) -> int:
    import simulator
    from cli.runtime import setup_logging
    from simulator.wait import wait_for_urls

    setup_logging(args.log_level)
    scenario = simulator.scenario.load(args.scenario)
    otlp = args.otlp if args.otlp is not None else default_otlp(args)
    if otlp.lower() in ("", "none", "off"):
        otlp = None
    out = Path(args.out) if args.out else load(args).data_path / "simulator"
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if args.wait_for and not wait_for_urls(args.wait_for, stop, timeout=args.wait_timeout):
        return 0 if stop.is_set() else 1
    options = simulator.Options(out_dir=out, seed=args.seed, rate=args.rate, duration=args.duration,
                                otlp=otlp, port_base=args.port_base, resume=args.resume)

    def announce(sim: simulator.Simulation) -> None:
        doc = sim.describe()
        length = f"for {doc['duration']:g}s" if doc["duration"] else "until stopped"
        print(f"simulating scenario {doc['scenario']} (seed {doc['seed']}, {doc['rate']:g} requests/s, "
              f"{length}); spans to {otlp or 'nowhere'}; files in {out}", flush=True)
        for d in doc["deployments"]:
            print(f"  {d['deployment_id']:<22} {d['base_url']}/v1/metadata  metrics {d['metrics_url']}  "
                  f"dcgm {d['dcgm_url']}", flush=True)

    sim = simulator.run(scenario, options, stop, on_start=announce)
    if sim.incident:
        print(f"incident: {sim.incident['client_service']} ({sim.incident['caller']}) ran "
              f"{sim.incident['tool']} on {sim.incident['target']} through {sim.incident['deployment_id']}")
        print(f"trace it back: {sim.incident['command']}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="play a NIM fleet and its clients (logs, metrics, spans)")
    p.add_argument("--scenario", help="scenario YAML (default: the built-in one)")
    p.add_argument("--seed", type=int, help="makes ids and the sequence reproducible (default: the scenario's)")
    p.add_argument("--rate", type=float, help="client requests per second (default: the scenario's)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (0: until Ctrl-C)")
    p.add_argument("--otlp", help="where spans go: http://host:4318 (default: this config's collector), "
                                  "grpc://host:4317, or none")
    p.add_argument("--out", help="directory for logs, Helm values, governance files, incident.json "
                                 "(default: <data_dir>/simulator)")
    p.add_argument("--port-base", type=int, default=0,
                   help="deployment i serves on port BASE+2i and its DCGM exporter on BASE+2i+1 "
                        "(default: free ports)")
    p.add_argument("--wait-for", action="append", default=[], metavar="URL",
                   help="wait until this URL answers 200 before starting (repeatable)")
    p.add_argument("--wait-timeout", type=float, default=180.0)
    p.add_argument("--resume", action="store_true",
                   help="continue the scenario where the last run in --out stopped: deployments keep "
                        "their revision, upgrades and the incident that happened are not played again")
    p.set_defaults(func=cmd_simulate)
