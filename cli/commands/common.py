"""What every command module shares: loading the config, printing, calling the API."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

from nimtrail import api_client, config as config_mod


def load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config)


def load_for_kafka(args: argparse.Namespace) -> config_mod.Config:
    """The config of a command that talks to Kafka itself: an empty kafka.bootstrap means
    the bundled broker of data_dir, found the same way the stages find it."""
    from cli.runtime import with_bootstrap

    return with_bootstrap(load(args))


def print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def token() -> str | None:
    """The query API token: NIMTRAIL_TOKEN or the file NIMTRAIL_TOKEN_FILE names, never a
    command-line flag (it would show in ps)."""
    return api_client.env_token()


def query(args: argparse.Namespace, name: str, params: dict[str, Any]) -> dict[str, Any]:
    config = load(args)
    base = os.environ.get("NIMTRAIL_API") or config.api_url
    return api_client.query(base, name, params, token=token())
