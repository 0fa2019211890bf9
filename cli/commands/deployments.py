"""`nimtrail deployments register|list|show|diff`: the governance records of NIM deployments.

Every subcommand reads the compacted deployments topic directly (it is small), so they work
whether or not the warehouse is running, and see exactly the versions the processors and
the warehouse see.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli import table
from nimtrail import records
from cli.commands.common import load_for_kafka, print_json
from nimtrail.deployments import files, topic, versions
from nimtrail.errors import NimtrailError

LIST_COLUMNS = ["deployment_id", "version", "valid_from", "nim_image", "model_id", "profile_name",
                "engine_backend", "gpu_type", "gpu_count", "purpose"]


class NotRegistered(NimtrailError):
    """The deployment or version asked for is not on the topic."""


def _history(config: Any, deployment_id: str) -> list[dict[str, Any]]:
    all_records = topic.read_all(config)
    found = versions.history(all_records, deployment_id)
    if not found:
        known = ", ".join(sorted({r["deployment_id"] for r in all_records})) or "none"
        raise NotRegistered(f"no deployment {deployment_id!r} is registered (registered: {known})")
    return found


def _version(found: list[dict[str, Any]], number: int | None) -> dict[str, Any]:
    if number is None:
        return found[-1]
    for record in found:
        if record["version"] == number:
            return record
    raise NotRegistered(f"{found[0]['deployment_id']} has no version {number} "
                        f"(versions: {', '.join(str(r['version']) for r in found)})")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, dict, list)):
        return records.canonical_bytes(value).decode()
    return str(value)


def cmd_register(args: argparse.Namespace) -> int:
    # Every file is read and checked before Kafka is touched: one bad file, nothing registered.
    groups = files.group(args.files, args.deployment)
    config = load_for_kafka(args)
    now = records.now_iso()
    topic.ensure(config)
    with topic.Writer(config) as writer:
        # 1. The writer is open (other registrations fenced) before the topic is read, so the
        #    versions decided below cannot be taken by a concurrent registration.
        # 2. Decide every deployment's next version; any error here writes nothing.
        outcomes = versions.plan(groups, topic.read_all(config), now=now, valid_from=args.valid_from)
        # 3. Publish all new versions in one transaction.
        writer.publish([o.record for o in outcomes if o.changed])
    if args.json:
        print_json({"deployments": [
            {"deployment_id": o.deployment_id, "status": "registered" if o.changed else "unchanged",
             "version": o.record["version"], "valid_from": o.record["valid_from"],
             "changed_fields": [c["field"] for c in o.changes]} for o in outcomes]})
        return 0
    for o in outcomes:
        if not o.changed:
            print(f"{o.deployment_id}: unchanged, still version {o.record['version']}")
        elif o.previous is None:
            print(f"{o.deployment_id}: registered version 1")
        else:
            fields = ", ".join(c["field"] for c in o.changes)
            print(f"{o.deployment_id}: registered version {o.record['version']} (changed: {fields})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load_for_kafka(args)
    topic.ensure(config)
    rows = list(versions.latest(topic.read_all(config)).values())
    if args.json:
        print_json({"rows": rows})
    else:
        print(table.render(rows, LIST_COLUMNS))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config = load_for_kafka(args)
    topic.ensure(config)
    record = _version(_history(config, args.deployment_id), args.version)
    if args.json:
        print_json(record)
        return 0
    width = max(len(f) for f in records.DEPLOYMENT_FIELDS)
    print(f"{record['deployment_id']} version {record['version']} (valid from {record['valid_from']})")
    for field in records.DEPLOYMENT_FIELDS:
        if field in {"deployment_id", "version", "valid_from"}:
            continue
        print(f"  {field.ljust(width)}  {_text(record.get(field))}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    config = load_for_kafka(args)
    topic.ensure(config)
    found = _history(config, args.deployment_id)
    new = _version(found, args.to_version)
    if args.from_version is not None:
        old = _version(found, args.from_version)
    else:
        earlier = [r for r in found if r["version"] < new["version"]]
        if not earlier:
            raise NotRegistered(f"{args.deployment_id} has no version before {new['version']} to "
                                f"compare with (give --from and --to)")
        old = earlier[-1]
    changes = versions.diff(old, new)
    if args.json:
        print_json({"deployment_id": args.deployment_id, "from_version": old["version"],
                    "to_version": new["version"], "from_valid_from": old["valid_from"],
                    "to_valid_from": new["valid_from"], "changes": changes})
        return 0
    print(f"{args.deployment_id}: version {old['version']} ({old['valid_from']}) → "
          f"version {new['version']} ({new['valid_from']})")
    if not changes:
        print("  no governed field differs")
    for path, a, b in versions.leaf_changes(old, new):
        print(f"  {path}: {_text(a)} → {_text(b)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    deployments = sub.add_parser("deployments", help="governance records of NIM deployments")
    actions = deployments.add_subparsers(dest="action", required=True, metavar="ACTION")

    reg = actions.add_parser(
        "register", help="register Helm values, manifests, governance files, NIM metadata or startup logs")
    reg.add_argument("files", nargs="+", metavar="FILE")
    reg.add_argument("--deployment", help="the deployment id, for files that do not name one "
                                          "(Helm values, saved /v1/metadata JSON, logs)")
    reg.add_argument("--valid-from", help="when the new version took effect (ISO-8601; default: now)")
    reg.add_argument("--json", action="store_true")
    reg.set_defaults(func=cmd_register)

    lst = actions.add_parser("list", help="the latest version of every deployment")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="one deployment's record")
    show.add_argument("deployment_id", metavar="ID")
    show.add_argument("--version", type=int, help="a version number (default: the latest)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    diff = actions.add_parser("diff", help="what changed between two versions")
    diff.add_argument("deployment_id", metavar="ID")
    diff.add_argument("--from", dest="from_version", type=int, help="(default: the version before --to)")
    diff.add_argument("--to", dest="to_version", type=int, help="(default: the latest)")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_diff)
