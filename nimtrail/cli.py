"""The `nimtrail` command: starts any stage and asks the audit trail questions."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import orjson
import yaml

from nimtrail import api_client, broker, config as config_mod, table
from nimtrail.errors import NimtrailError

CALL_COLUMNS = ["started_at", "call_id", "caller", "client_service", "model", "deployment_id",
                "finish_reason", "tool_names", "actions"]
ACTION_FIELDS = ["action_id", "tool_call_id", "tool_name", "target", "started_at", "executed_by",
                 "gate", "gate_decision", "approver", "outcome", "call_id"]
CALL_FIELDS = ["call_id", "started_at", "model", "operation", "finish_reason", "tool_call_ids",
               "tool_names", "prompt_sha256", "response_sha256", "input_tokens", "output_tokens",
               "ttft_ms", "e2e_ms", "trace_id"]
DEPLOYMENT_FIELDS = ["deployment_id", "version", "nim_image", "model_id", "profile_name",
                     "profile_id", "gpu_type", "gpu_count", "engine_backend", "purpose"]


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config)


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _token() -> str | None:
    return os.environ.get("NIMTRAIL_TOKEN")


# ---- stages --------------------------------------------------------------------------


def _stage(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        from nimtrail.runtime import run_stage, setup_logging

        setup_logging(args.log_level)
        run_stage(import_module(module).run, _load(args))
        return 0

    return run


def cmd_app(args: argparse.Namespace) -> int:
    from app.launch import run_app

    return run_app(_load(args))


def cmd_up(args: argparse.Namespace) -> int:
    from nimtrail.supervisor import up

    up(_load(args), args.config, duration=args.duration)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"configuration is valid ({args.config or os.environ.get('NIMTRAIL_CONFIG') or 'defaults'})")
    if args.show:
        print(yaml.safe_dump(config_mod.as_dict(config), sort_keys=False), end="")
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    config = _load(args)
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


# ---- queries -------------------------------------------------------------------------


def _query(args: argparse.Namespace, name: str, params: dict[str, Any]) -> dict[str, Any]:
    config = _load(args)
    base = os.environ.get("NIMTRAIL_API") or config.api_url
    return api_client.query(base, name, params, token=_token())


def cmd_calls(args: argparse.Namespace) -> int:
    result = _query(args, "calls", {
        "caller": args.caller, "client_service": args.client_service, "model": args.model,
        "deployment_id": args.deployment, "since": args.since, "until": args.until,
        "limit": args.limit, "offset": args.offset})
    if args.json:
        _print_json(result)
        return 0
    rows = [{**r, "actions": [a["tool_name"] for a in r.get("actions") or []]} for r in result["rows"]]
    print(table.render(rows, CALL_COLUMNS))
    if result.get("next_offset") is not None:
        print(f"(more: --offset {result['next_offset']})")
    return 0


def cmd_trace_back(args: argparse.Namespace) -> int:
    result = _query(args, "trace-back", {"action_id": args.action_id,
                                         "tool_call_id": args.tool_call_id, "call_id": args.call_id})
    if args.json:
        _print_json(result)
        return 0 if result["found"] else 1
    if not result["found"]:
        print("nothing found for that id")
        return 1
    for action in result["actions"]:
        print(table.render_record("action", action, ACTION_FIELDS))
    print(table.render_record("model call (the response that asked for it)", result["call"], CALL_FIELDS))
    print(table.render_record("caller", result["caller"], ["caller", "client_service",
                                                            "client_address", "api_key_fingerprint"]))
    print(table.render_record("deployment", result["deployment"], DEPLOYMENT_FIELDS))
    for finding in result["findings"]:
        print(f"finding: {finding['kind']} ({finding['severity']}) {finding.get('detail')}")
    return 0


# ---- parser --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nimtrail", description=__doc__)
    p.add_argument("--config", default=os.environ.get("NIMTRAIL_CONFIG"),
                   help="YAML configuration file (default: $NIMTRAIL_CONFIG, else built-in defaults)")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the broker (if bundled), every stage and the app")
    up.add_argument("--demo", action="store_true", help="also run the simulator feeding the pipeline")
    up.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
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
        sub.add_parser(name, help=text).set_defaults(func=_stage(module))
    sub.add_parser("app", help="run the Streamlit app").set_defaults(func=cmd_app)

    calls = sub.add_parser("calls", help="who called what model, and what followed")
    for flag in ("caller", "client-service", "model", "deployment", "since", "until"):
        calls.add_argument(f"--{flag}")
    calls.add_argument("--limit", type=int, default=50)
    calls.add_argument("--offset", type=int, default=0)
    calls.add_argument("--json", action="store_true")
    calls.set_defaults(func=cmd_calls)

    back = sub.add_parser("trace-back", help="from an action to the model call, caller, deployment")
    which = back.add_mutually_exclusive_group(required=True)
    which.add_argument("--action-id")
    which.add_argument("--tool-call-id")
    which.add_argument("--call-id")
    back.add_argument("--json", action="store_true")
    back.set_defaults(func=cmd_trace_back)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except NimtrailError as e:
        print(f"nimtrail: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
