"""The `nimtrail` command: starts any stage and asks the audit trail questions."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from nimtrail.errors import NimtrailError

# One module per command family, each with register(subparsers).
COMMAND_MODULES = (
    "cli.commands.stages",
    "cli.commands.queries",
    "cli.commands.trace",
    "cli.commands.usage",
    "cli.commands.deployments",
    "cli.commands.simulate",
    "cli.commands.compliance",
)


def _global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--config and --log-level. The top-level parser holds their defaults; every command
    accepts them too (`nimtrail check --config FILE`), without a default of its own so that
    one given before the command name is not overwritten."""
    p.add_argument("--config", default=os.environ.get("NIMTRAIL_CONFIG") if defaults else argparse.SUPPRESS,
                   help="YAML configuration file (default: $NIMTRAIL_CONFIG, else built-in defaults)")
    p.add_argument("--log-level", default="INFO" if defaults else argparse.SUPPRESS)


def _commands(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `p`, however deeply commands nest (`deployments register`)."""
    found = []
    for action in p._actions:  # noqa: SLF001 - argparse has no public walk of subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_commands(child)]
    return found


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nimtrail", description=__doc__)
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        import_module(module).register(sub)
    for command in _commands(p):
        _global_options(command, defaults=False)
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
