"""Commands that run things: up, check, kafka, and each stage in the foreground."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Callable

import yaml

from cli import broker
from nimtrail import config as config_mod
from nimtrail.errors import ConfigError
from cli.commands.common import load


def _stage(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        from cli.runtime import run_stage, setup_logging

        setup_logging(args.log_level)
        run_stage(import_module(module).run, _with_flags(load(args), args))
        return 0

    return run


def _with_flags(config: config_mod.Config, args: argparse.Namespace) -> config_mod.Config:
    """The processor's --instance-id and --ops, the warehouse's --shard, over what the
    configuration says."""
    if getattr(args, "shard", None) is not None:
        shards = config.warehouse.shards
        if not 0 <= args.shard < shards:
            raise ConfigError(f"--shard {args.shard}: expected between 0 and {shards - 1} "
                              f"(warehouse.shards is {shards})")
        config = dataclasses.replace(config, warehouse=dataclasses.replace(config.warehouse, shard=args.shard))
    processor = config.processor
    if getattr(args, "instance_id", None):
        processor = dataclasses.replace(processor, instance_id=args.instance_id)
    if getattr(args, "ops", None):
        try:
            processor = dataclasses.replace(processor, ops=config_mod.HostPort.parse(args.ops))
        except ValueError as e:
            raise ConfigError(f"--ops {args.ops!r}: {e}") from None
    return dataclasses.replace(config, processor=processor)


def cmd_app(args: argparse.Namespace) -> int:
    from app.launch import run_app

    return run_app(load(args))


def cmd_up(args: argparse.Namespace) -> int:
    from cli.supervisor import up

    config = load(args)
    if args.processors < 1:
        raise ConfigError(f"--processors {args.processors}: at least 1")
    if args.partitions is not None:
        if not 0 <= args.partitions <= config_mod.MAX_PARTITIONS:
            raise ConfigError(f"--partitions {args.partitions}: expected 0 (not split) to {config_mod.MAX_PARTITIONS}")
        config = dataclasses.replace(config, processor=dataclasses.replace(config.processor, partitions=args.partitions))
    if args.shards is not None:
        if not 1 <= args.shards <= config_mod.MAX_SHARDS:
            raise ConfigError(f"--shards {args.shards}: expected between 1 and {config_mod.MAX_SHARDS}")
        config = dataclasses.replace(config, warehouse=dataclasses.replace(config.warehouse, shards=args.shards))
    if not args.demo:
        up(config, args.config, duration=args.duration, processors=args.processors)
        return 0
    from cli.demo import Demo

    demo = Demo(config, args.config, args.scenario)
    up(config, args.config, duration=args.duration, extra=demo.children(), env=demo.env(),
       on_ready=demo.announce, poll=demo.poll, processors=args.processors)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args)
    print(f"configuration is valid ({args.config or os.environ.get('NIMTRAIL_CONFIG') or 'defaults'})")
    if args.show:
        shown = config_mod.as_dict(config)
        if shown["kafka"]["sasl_password"]:
            shown["kafka"]["sasl_password"] = "[set]"  # a secret is never printed
        print(yaml.safe_dump(shown, sort_keys=False), end="")
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    config = load(args)
    if args.action == "start":
        handle = broker.start(config.data_path, port=args.port or config.kafka.port)
        print(f"Kafka broker running at {handle.bootstrap} (pid {handle.pid}, data in {handle.data_dir})")
    elif args.action == "stop":
        print("Kafka broker stopped" if broker.stop(config.data_path) else "no Kafka broker was running")
    else:
        handle = broker.status(config.data_path)
        if not handle:
            print("no Kafka broker running")
            return 1
        print(f"Kafka broker running at {handle.bootstrap} (pid {handle.pid})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the broker (if bundled), every stage and the app")
    up.add_argument("--demo", action="store_true", help="also run the simulator feeding the pipeline")
    up.add_argument("--scenario", help="with --demo: the simulator's scenario (default: the built-in one)")
    up.add_argument("--duration", type=float, default=None,
                    help="stop by itself after this many seconds (default: run until Ctrl-C)")
    up.add_argument("--processors", type=int, default=1,
                    help="processors to run (default 1): with --partitions, they share the work; "
                         "without, one reads the input and the others stand by to take over")
    up.add_argument("--partitions", type=int, default=None,
                    help="split the join over this many partitions of the evidence topic, shared by "
                         "the processors (default: processor.partitions, 0: not split)")
    up.add_argument("--shards", type=int, default=None,
                    help="warehouse shards to run, each writing its share of the audit partitions to "
                         "its own store; shard 0 answers the query API over all (default: "
                         "warehouse.shards, 1)")
    up.set_defaults(func=cmd_up)

    check = sub.add_parser("check", help="validate the configuration without touching the network")
    check.add_argument("--show", action="store_true", help="print the resolved configuration")
    check.set_defaults(func=cmd_check)

    kafka = sub.add_parser("kafka", help="the bundled Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--port", type=int, default=0, help="client port (default: kafka.port)")
    kafka.set_defaults(func=cmd_kafka)

    for name, module, text in (("collector", "collector.service", "run the collector"),
                               ("processor", "processors.service", "run the processor"),
                               ("warehouse", "warehouse.service", "run the warehouse and query API")):
        stage = sub.add_parser(name, help=text)
        stage.set_defaults(func=_stage(module))
        if name == "processor":
            stage.add_argument("--instance-id", help="this member's static id in the processor group "
                               "(default: processor.instance_id, else the group id); each running "
                               "processor needs its own")
            stage.add_argument("--ops", help="host:port of its /healthz and /metrics (default: processor.ops)")
        if name == "warehouse":
            stage.add_argument("--shard", type=int, default=None,
                               help="which of warehouse.shards this one is (default: warehouse.shard, 0)")
    sub.add_parser("app", help="run the Streamlit app").set_defaults(func=cmd_app)
