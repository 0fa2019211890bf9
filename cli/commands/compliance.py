"""Compliance commands: verify the ledger, apply retention, legal holds, the retention
report and day archives.

While the warehouse runs, these go through its query API (it holds the DuckDB file);
when nothing answers, they open the file directly (`--offline` forces that), so
`nimtrail verify` works on a stopped warehouse and on a copied data directory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from cli import table
from nimtrail import api_client
from nimtrail.api_client import ApiError
from cli.commands.common import load, print_json, token
from nimtrail.errors import NimtrailError


def _call(args: argparse.Namespace, kind: str, name: str, params: dict[str, Any]) -> Any:
    """Run a named operation through the API, or on the file when no warehouse answers.
    Exports come back as (bytes, {"sha256", "export_id", "rows"})."""
    config = load(args)
    public_key = Path(args.public_key) if getattr(args, "public_key", None) else None
    if not getattr(args, "offline", False):
        base = os.environ.get("NIMTRAIL_API") or config.api_url
        try:
            if kind == "query":
                return api_client.query(base, name, params, token=token())
            if kind == "action":
                return api_client.action(base, name, params, token=token())
            return api_client.export(base, name, params, token=token())
        except ApiError as e:
            if e.status is not None:
                raise
            print(f"nimtrail: no warehouse answers at {base}; opening {config.warehouse_path} directly",
                  file=sys.stderr)
    from cli.runtime import with_bootstrap_if_running
    from warehouse.local import run
    from warehouse.operations import Export

    result = run(with_bootstrap_if_running(config), kind, name, params, public_key)
    if isinstance(result, Export):
        return result.data, {"sha256": result.meta["sha256"], "export_id": result.meta["export_id"],
                             "rows": str(result.rows)}
    return result


def cmd_verify(args: argparse.Namespace) -> int:
    result = _call(args, "query", "verify", {})
    pinned = None
    if args.public_key:
        from warehouse import digests

        pinned = digests.fingerprint(digests.load_public_key(Path(args.public_key)))
        # (over shards: every shard's key, each signs its own digests)
        used = {r["digests"].get("public_key_sha256") for r in result.get("shards", [result])} - {None}
        if used - {pinned}:
            result["ok"] = False
            result["problems"].insert(0, {"check": "digest", "where": args.public_key,
                                          "message": "the digests were signed with a different key"})
            result["first_problem"] = f"{args.public_key}: the digests were signed with a different key"
    if args.json:
        print_json(result)
        return 0 if result["ok"] else 1
    if result["ok"]:
        for shard in result.get("shards", [result]):
            print(("" if "shard" not in shard else f"{shard['shard']}: ") + _verified(shard))
        for warning in result["warnings"]:
            print(f"note: {warning}")
        return 0
    print(f"VERIFICATION FAILED: {result['first_problem']}")
    for problem in result["problems"]:
        print(f"  [{problem['check']}] {problem['where']}: {problem['message']}")
    for warning in result["warnings"]:
        print(f"note: {warning}")
    return 1


def _verified(result: dict[str, Any]) -> str:
    ledger, digests_seen = result["ledger"], result["digests"]
    rows = sum(result["rows_checked"].values())
    return (f"verified: {ledger['entries']} ledger entries (head {ledger['seq']} "
            f"{ledger['hash'][:16]}…), {rows} rows in {len(result['rows_checked'])} tables, "
            f"{digests_seen['checked']} signed digests"
            + (f" (latest {digests_seen['latest']})" if digests_seen["latest"] else ""))


def cmd_retention_apply(args: argparse.Namespace) -> int:
    result = _call(args, "action", "retention-apply", {"dry_run": bool(args.dry_run)})
    if args.json:
        print_json(result)
        return 0
    verb = "would purge" if result["dry_run"] else "purged"
    print(table.render(result["steps"], ["policy", "keep_days", "table", "action", "cutoff",
                                         "rows", "held_rows"]))
    print(f"{verb} {result['rows']} rows; {result['held_rows']} expired rows kept by legal holds"
          + ("" if result["dry_run"] else f" (run {result['run_id']}, recorded in the ledger)"))
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    if args.hold_action == "add":
        result = _call(args, "action", "hold-add", {
            "deployment_id": args.deployment, "caller": args.caller, "from": args.time_from,
            "to": args.time_to, "reason": args.reason})
    elif args.hold_action == "remove":
        result = _call(args, "action", "hold-remove", {"hold_id": args.hold_id, "reason": args.reason})
    else:
        result = _call(args, "query", "holds", {"state": "all" if args.all else "active"})
        if args.json:
            print_json(result)
        else:
            print(table.render(result["rows"], ["hold_id", "created_at", "created_by", "reason",
                                                "deployment_id", "caller", "time_from", "time_to",
                                                "released_at"]))
        return 0
    if args.json:
        print_json(result)
    else:
        hold = result["hold"]
        state = f"released at {hold['released_at']}" if hold["released_at"] else "in force"
        print(f"hold {hold['hold_id']} {state}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    data, meta = _call(args, "export", "retention-report", {
        "from": args.time_from, "to": args.time_to, "format": args.format})
    digest = _write(Path(args.out), data, meta)
    print(f"wrote {args.out} ({args.format}, {meta['rows']} rows)")
    print(f"sha256 {digest}  (recorded in the ledger as export {meta['export_id']})")
    return 0


def cmd_report_show(args: argparse.Namespace) -> int:
    """Whether this nimtrail produced an export (by export id or the file's SHA-256), when,
    with which filters and for whom; exit status 1 when it did not."""
    result = _call(args, "query", "export-lookup", {"id": args.id})
    if args.json:
        print_json(result)
        return 0 if result["found"] else 1
    if not result["found"]:
        print(f"not produced by this nimtrail: no export has the id or SHA-256 {args.id}")
        return 1
    for export in result["rows"]:
        print(describe_export(export))
    return 0


def describe_export(export: dict[str, Any]) -> str:
    """One export in a sentence: what, when, with which filters, by whom."""
    by = export.get("principal") or "unknown"
    if export.get("person"):
        by = f"{export['person']} (token {by})"
    filters = ", ".join(f"{k}={v}" for k, v in sorted((export.get("params") or {}).items()))
    return (f"produced by this nimtrail: export {export['export_id']} at {export['exported_at']}, "
            f"{export['kind']} ({export['format']}, {export['rows']} rows, {export['bytes']} bytes), "
            f"filters {filters or 'none'}, by {by}; sha256 {export['sha256']}")


def cmd_archive(args: argparse.Namespace) -> int:
    from warehouse.archive import TABLES

    out = Path(args.out)
    files = []
    for name in args.tables or TABLES:
        data, meta = _call(args, "export", "archive", {"day": args.day, "table": name})
        rows = int(meta["rows"] or 0)
        entry = {"table": name, "rows": rows, "export_id": meta["export_id"], "sha256": meta["sha256"]}
        if rows:
            path = out / name / f"day={args.day}" / "part-0.parquet"
            if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != meta["sha256"]:
                raise NimtrailError(f"{path} exists with different content: archive partitions are "
                                    "immutable (archive to a new directory)")
            _write(path, data, meta)
            entry["file"] = path.relative_to(out).as_posix()
        files.append(entry)
        print(f"{name}: {rows} rows" + (f" -> {entry['file']}" if rows else ""))
    manifest = out / f"manifest-{args.day}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(orjson.dumps({"archive": "nimtrail", "day": args.day, "files": files},
                                      option=orjson.OPT_INDENT_2) + b"\n")
    print(f"manifest {manifest}")
    return 0


def _write(path: Path, data: bytes, meta: dict[str, str]) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if meta.get("sha256") and meta["sha256"] != digest:
        raise NimtrailError("the export's bytes do not match the SHA-256 the warehouse recorded")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _offline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true",
                   help="open the DuckDB file directly (the warehouse must be stopped)")


def register(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser("verify", help="recompute the ledger, rows and signed digests")
    verify.add_argument("--public-key", help="the exported Ed25519 public key to check digests with "
                                             "(default: <data_dir>/keys/ledger-ed25519.pub)")
    verify.add_argument("--json", action="store_true")
    _offline(verify)
    verify.set_defaults(func=cmd_verify)

    ret = sub.add_parser("retention", help="apply the retention policies")
    ret_sub = ret.add_subparsers(dest="retention_action", required=True)
    apply = ret_sub.add_parser("apply", help="purge what expired, except what a legal hold covers")
    apply.add_argument("--dry-run", action="store_true", help="only count what would be purged")
    apply.add_argument("--json", action="store_true")
    _offline(apply)
    apply.set_defaults(func=cmd_retention_apply)

    hold = sub.add_parser("hold", help="legal holds")
    hold_sub = hold.add_subparsers(dest="hold_action", required=True)
    add = hold_sub.add_parser("add", help="keep matching data whatever retention says")
    add.add_argument("--deployment")
    add.add_argument("--caller")
    add.add_argument("--from", dest="time_from", help="ISO-8601 start of the held period")
    add.add_argument("--to", dest="time_to", help="ISO-8601 end of the held period")
    add.add_argument("--reason", required=True)
    remove = hold_sub.add_parser("remove", help="release a hold")
    remove.add_argument("hold_id")
    remove.add_argument("--reason")
    listing = hold_sub.add_parser("list", help="holds in force (--all: released ones too)")
    listing.add_argument("--all", action="store_true")
    for p in (add, remove, listing):
        p.add_argument("--json", action="store_true")
        _offline(p)
        p.set_defaults(func=cmd_hold)

    report = sub.add_parser("report", help="compliance reports")
    report_sub = report.add_subparsers(dest="report_kind", required=True)
    retention = report_sub.add_parser("retention", help="what is held, purged, on hold, and who read it")
    retention.add_argument("--from", dest="time_from", required=True)
    retention.add_argument("--to", dest="time_to", required=True)
    retention.add_argument("--format", choices=["csv", "json", "parquet"], default="json")
    retention.add_argument("--out", required=True)
    _offline(retention)
    retention.set_defaults(func=cmd_report)
    show = report_sub.add_parser("show", help="whether, when, with which filters and by whom this "
                                              "nimtrail produced an export")
    show.add_argument("id", metavar="ID|SHA256", help="an export id (exp-...) or a file's SHA-256 "
                                                      "(sha256sum FILE)")
    show.add_argument("--json", action="store_true")
    _offline(show)
    show.set_defaults(func=cmd_report_show)

    arch = sub.add_parser("archive", help="export one day as immutable Parquet partitions")
    arch.add_argument("--day", required=True, help="YYYY-MM-DD (UTC)")
    arch.add_argument("--out", required=True)
    arch.add_argument("--tables", nargs="*", help="default: every table with a time column")
    _offline(arch)
    arch.set_defaults(func=cmd_archive)
