"""The `nimtrail` command: starts any stage and asks the audit trail questions."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from nimtrail.errors import NimtrailError

# One module per command family, each with register(subparsers).
COMMAND_MODULES = (
    "nimtrail.commands.stages",
    "nimtrail.commands.queries",
    "nimtrail.commands.deployments",
    "nimtrail.commands.simulate",
    "nimtrail.commands.compliance",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nimtrail", description=__doc__)
    p.add_argument("--config", default=os.environ.get("NIMTRAIL_CONFIG"),
                   help="YAML configuration file (default: $NIMTRAIL_CONFIG, else built-in defaults)")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        import_module(module).register(sub)
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
