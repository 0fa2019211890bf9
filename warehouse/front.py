"""The query front of a sharded warehouse: named operations answered over every shard.

Shard 0 answers the query API (docs/scale.md, "Warehouse shards"). For an operation it
asks every shard for its part (warehouse/shard_reads.py: its own store directly, the
others over their internal API, all at once) and merges the parts into the answer one
store would give: pages merged in the query's order, lookups concatenated in theirs,
counts summed. Authorization, masking and the access log stay where they are
(operations.execute), so the access log and exports are one trail, in shard 0's store.

A call and its tool actions have different keys and so may be in different shards: every
answer that joins them (a calls page with its actions, trace-back) asks again with the
keys the first answers named. Operations without a merge here are refused with 501 and
say so, rather than answered from one shard's part of the data.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import io
from typing import Any, Callable

import orjson
import polars as pl

from nimtrail import api_client
from nimtrail.config import Config
from warehouse import shards
from warehouse.access import Principal
from warehouse.params import Params
from warehouse.queries import gpu_metrics as gpu_metrics_q
from warehouse.queries import latency as latency_q
from warehouse.queries import latency_changes as latency_changes_q
from warehouse.queries import latency_estimate, traces
from warehouse.queries import usage as usage_q
from warehouse.queries.actions import FACET_LIMIT, SEVERITY_NAMES
from warehouse.queries.calls import LOOKUP_ORDER, trace_back_by, with_actions
from warehouse.queries.common import page, page_of
from warehouse.queries import actions as actions_q
from warehouse.queries import governance
from warehouse.queries.governance import DEPLOYMENT_COLUMNS
from warehouse.queries.latency import BUCKETS
from warehouse.queries.latency import GROUPS as GPU_GROUPS

ASK_TIMEOUT = 120.0  # a verification of a large shard reads every row


class ShardUnavailable(Exception):
    """A shard did not answer the front (503): the answer would be missing its part."""


class NotOverShards(Exception):
    """An operation the front does not merge yet (501)."""


Local = Callable[[str, dict[str, Any]], Any]


class Shards:
    """Every shard of the layout, as the front asks them: itself through `local`, the
    others over HTTP with the shards' token (`config`: the front's own, shards.for_shard)."""

    def __init__(self, config: Config, token: str, local: Local):
        self.local = local
        self.token = token
        self.remotes = [(shards.name(config, i), shards.peer_url(config, i)) for i in range(1, config.warehouse.shards)]
        self.names = [shards.name(config, 0), *(n for n, _ in self.remotes)]

    def ask(self, read: str, args: dict[str, Any]) -> list[Any]:
        """Each shard's answer to `read`, in shard order."""
        if not self.remotes:
            return [self.local(read, args)]
        with concurrent.futures.ThreadPoolExecutor(len(self.remotes)) as pool:
            remote = [pool.submit(post, name, url, self.token, read, args) for name, url in self.remotes]
            mine = self.local(read, args)
            return [mine, *(f.result() for f in remote)]


def post(name: str, url: str, token: str, read: str, args: dict[str, Any]) -> Any:
    """Ask the shard `name` at `url` for `read` (warehouse/shard_reads.py)."""
    try:
        _headers, data = api_client.request(url, "POST", f"/v1/shard/{read}", body=args, token=token,
                                            timeout=ASK_TIMEOUT)
        return orjson.loads(data)
    except (api_client.ApiError, orjson.JSONDecodeError) as e:
        raise ShardUnavailable(f"warehouse {name} at {url}, asked for {read}: {e}") from e


def ask_front(config: Config, read: str, args: dict[str, Any]) -> Any:
    """A shard asking shard 0 (the front) for what only it writes: the legal holds."""
    return post(shards.name(config, 0), shards.peer_url(config, 0), shards.token(config), read, args)


# ---- merging --------------------------------------------------------------------------


def _ordered(found: list[dict[str, Any]], by: tuple[str, ...], descending: bool = False) -> list[dict[str, Any]]:
    """`found` sorted as SQL's ORDER BY by[0] (DESC if `descending`) NULLS LAST, by[1:]
    ascending: nimtrail's time text sorts as the times do."""
    out = sorted(found, key=lambda r: tuple(str(r.get(k) or "") for k in by[1:]))
    out.sort(key=lambda r: r.get(by[0]) or "", reverse=descending)
    out.sort(key=lambda r: r.get(by[0]) is None)
    return out


def calls(shard_set: Shards, raw: dict[str, list[str]], params: Params) -> dict[str, Any]:
    """Each shard's first offset + limit calls, merged newest first; then the page's
    actions from every shard (a call's actions have their own keys, so their own shards)."""
    limit, offset = page(params)
    parts = shard_set.ask("calls-page", {"params": raw, "limit": offset + limit, "offset": 0})
    merged = _ordered([r for p in parts for r in p["rows"]], ("started_at", "call_id"), descending=True)
    result = page_of(merged, limit, offset, any(p["more"] for p in parts))
    ids = [r["call_id"] for r in result["rows"]]
    with_actions(result["rows"], [a for p in shard_set.ask("actions-of", {"call_ids": ids}) for a in p] if ids else [])
    return result


_LOOKUP_ORDER = {**LOOKUP_ORDER, **traces.LOOKUP_ORDER}


def finder(shard_set: Shards) -> Callable[[str, Any], list[dict[str, Any]]]:
    """A lookup (queries.calls.LOOKUPS, queries.traces.LOOKUPS) asked of every shard: the
    rows concatenated in the lookup's order (and cut at its limit, or made distinct)."""
    def find(what: str, value: Any) -> list[dict[str, Any]]:
        found = [r for part in shard_set.ask("lookup", {"what": what, "value": value}) for r in part]
        if what in traces.DISTINCT:
            found = list({orjson.dumps(r, option=orjson.OPT_SORT_KEYS): r for r in found}.values())
        if what in _LOOKUP_ORDER:
            found = _ordered(found, _LOOKUP_ORDER[what])
        return found[:value[1]] if what in traces.LIMITED else found

    return find


def trace_back(shard_set: Shards, params: Params) -> dict[str, Any]:
    return trace_back_by(params, finder(shard_set))


def trace(shard_set: Shards, params: Params) -> dict[str, Any]:
    return traces.trace_by(params, finder(shard_set))


def session(shard_set: Shards, params: Params) -> dict[str, Any]:
    return traces.session_by(params, finder(shard_set))


def facets(shard_set: Shards, raw: dict[str, list[str]]) -> dict[str, Any]:
    parts = shard_set.ask("facets", {"params": raw})
    out: dict[str, Any] = {}
    for name in parts[0]:
        if name != "findings":
            out[name] = sorted({v for p in parts for v in p[name]})[:FACET_LIMIT]
    kinds: dict[str, dict[str, Any]] = {}
    rank = {v: k for k, v in SEVERITY_NAMES.items()}
    for p in parts:
        for k in p["findings"]:
            seen = kinds.setdefault(k["kind"], {"kind": k["kind"], "severity": None, "count": 0})
            seen["count"] += k["count"]
            if rank.get(k["severity"], 0) > rank.get(seen["severity"], 0):
                seen["severity"] = k["severity"]
    out["findings"] = sorted(kinds.values(), key=lambda k: (-rank.get(k["severity"], 0), k["kind"]))[:FACET_LIMIT]
    return out


def deployments(shard_set: Shards, params: Params) -> dict[str, Any]:
    """The governance records (every shard holds them: shards.owns), filtered, reduced to
    each deployment's latest version and paged as one store does; each version with the
    calls it served in every shard."""
    wanted = {column: params.text(name) for name, column in DEPLOYMENT_COLUMNS.items()}
    latest = params.choice("versions", ("latest", "all"), "latest") == "latest"
    limit, offset = page(params)
    # (each shard's copy: retention removes a superseded version where no call of its own used it)
    every = list({(r["deployment_id"], r["version"]): r
                  for part in shard_set.ask("deployments", {}) for r in part}.values())
    served: dict[tuple[str, Any], int] = {}
    for part in shard_set.ask("calls-per-version", {}):
        for r in part:
            key = (r["deployment_id"], r["deployment_version"])
            served[key] = served.get(key, 0) + r["calls"]
    newest: dict[str, int] = {}
    for r in every:
        newest[r["deployment_id"]] = max(newest.get(r["deployment_id"], r["version"]), r["version"])
    found = [{**r, "calls": served.get((r["deployment_id"], r["version"]), 0)} for r in every
             if all(value is None or r.get(column) == value for column, value in wanted.items())
             and (not latest or r["version"] == newest[r["deployment_id"]])]
    found.sort(key=lambda r: (r["deployment_id"], -r["version"]))
    return page_of(found, limit, offset)


def usage(shard_set: Shards, raw: dict[str, list[str]], params: Params) -> dict[str, Any]:
    """Every shard's sums per group (and the range's total) added up, then shared out and
    paged as one store does (every shard holds the deployments the GPU-seconds are priced by)."""
    by = params.choice("by", tuple(usage_q.GROUPS), "caller")
    limit, offset = page(params)
    total: dict[str, Any] = {}
    groups: dict[Any, dict[str, Any]] = {}
    for part in shard_set.ask("usage-sums", {"params": raw}):
        for row in part:
            into = total if row["is_total"] else groups.setdefault(row["grp"], {"grp": row["grp"]})
            for name in usage_q.SUMMED:
                into[name] = into.get(name, 0) + (row.get(name) or 0)
    found = [{"is_total": True, **total}, *groups.values()] if total else []
    return usage_q.answer(by, found, limit, offset)


def gpu_metrics(shard_set: Shards, raw: dict[str, list[str]], params: Params) -> dict[str, Any]:
    """Every shard's sums and counts per group and bucket added up into means (a series'
    samples are keyed by scrape, so in every shard)."""
    keys = gpu_metrics_q.group_columns(params)
    added: dict[tuple, dict[str, Any]] = {}
    for part in shard_set.ask("gpu-metric-sums", {"params": raw}):
        for row in part:
            key = tuple(row[k] for k in keys)
            into = added.setdefault(key, {k: row[k] for k in keys})
            for name, value in row.items():
                if name not in keys:
                    into[name] = into.get(name, 0) + (value or 0)
    found = sorted(added.values(), key=lambda r: [(r[k] is None, r[k] if r[k] is not None else 0) for k in keys])
    return {"by": params.choice("by", tuple(GPU_GROUPS), "profile"),
            "bucket": params.choice("bucket", ("none", *BUCKETS), "1m"), "rows": gpu_metrics_q.means(found)}


class LatencyOverShards:
    """The parts `latency_from` reads (queries/latency.py, Source), from every shard: the
    range's call count summed; the calls' histogram counts summed (their percentiles are
    then the one store's); each group's timings gathered (exact percentiles need every
    value); the histogram samples of each series merged in time order (a series' samples
    are keyed by scrape, so in every shard)."""

    def __init__(self, shard_set: Shards, raw: dict[str, list[str]]):
        self.shard_set, self.raw = shard_set, raw

    def _ask(self, part: str) -> list[Any]:
        return self.shard_set.ask("latency-part", {"part": part, "params": self.raw})

    def calls_in_range(self) -> int:
        return sum(self._ask("calls-in-range"))

    def from_histograms(self, by: str, bucket: str, interval: str | None) -> list[dict[str, Any]]:
        groups, context, _ = latency_q.histogram_groups(by)
        keys = list(groups) + (["bucket_start"] if interval else [])
        return latency_estimate.merged([r for p in self._ask("histogram-counts") for r in p], keys, list(context))

    def from_calls(self, by: str, interval: str | None) -> list[dict[str, Any]]:
        keys = list(latency_q.GROUPS[by][0]) + (["bucket_start"] if interval else [])
        added: dict[tuple, dict[str, Any]] = {}
        for part in self._ask("calls-values"):
            for row in part:
                into = added.setdefault(tuple(row[k] for k in keys), {**row, "calls": 0, **{
                    f"{m}_{x}": 0 if x == "n" else [] for m in latency_q.METRICS for x in ("n", "values")}})
                into["calls"] += row["calls"]
                for m in latency_q.METRICS:
                    into[f"{m}_n"] += row[f"{m}_n"]
                    into[f"{m}_values"] += row[f"{m}_values"] or []
        return latency_q.with_quantiles(list(added.values()))

    def samples(self, by: str, interval: str | None) -> list[dict[str, Any]]:
        found = [{**r, "_ts": _time(r["_ts"]), **({"bucket_start": _time(r["bucket_start"])} if interval else {})}
                 for p in self._ask("samples") for r in p]
        found.sort(key=lambda r: tuple((r[k] is None, _sortable(r[k])) for k in latency_q.SERIES_ORDER))
        return found


def _time(value: Any) -> Any:
    """A time as DuckDB gave it (a datetime; text beyond what Python holds), back from JSON."""
    if not isinstance(value, str):
        return value
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return value


def _sortable(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else "" if value is None else str(value)


def latency(shard_set: Shards, raw: dict[str, list[str]], params: Params) -> dict[str, Any]:
    return latency_q.latency_from(params, LatencyOverShards(shard_set, raw))


def latency_changes(shard_set: Shards, con: Any, params: Params) -> dict[str, Any]:
    return latency_changes_q.latency_changes(
        con, params, lambda given: latency_q.latency_from(given, LatencyOverShards(shard_set, dict(given.raw))))


def findings(shard_set: Shards, raw: dict[str, list[str]], params: Params) -> dict[str, Any]:
    """A finding's group is derived from the calls, actions and samples it is about, which
    may be in other shards: their deployments and tools are resolved in every shard first
    and handed to each (governance.keyed's facts); then each shard's groups are added up,
    or its newest rows merged."""
    limit, offset = page(params)
    subjects = sorted({s for part in shard_set.ask("finding-subjects", {"params": raw}) for s in part})

    def records(ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        parts = shard_set.ask("subject-records", {"ids": ids})
        return {kind: [r for p in parts for r in p[kind]] for kind in ("actions", "calls", "samples")}

    facts = governance.subject_facts(subjects, records) if subjects else [[], [], []]
    parts = shard_set.ask("findings-part", {"params": raw, "facts": facts, "top": offset + limit + 1})
    if params.boolean("group", True):
        return governance.merged_groups(parts, limit, offset)
    return page_of(_ordered([r for p in parts for r in p], ("detected_at", "finding_id"), descending=True),
                   limit, offset)


def actions(shard_set: Shards, raw: dict[str, list[str]], params: Params) -> dict[str, Any]:
    """An action is listed with its call's columns and the findings about it and its call,
    each of which may be in another shard: every shard's findings, as flags per subject
    (and, with a filter on calls, the calls it selects), are handed to each shard, whose
    first rows in the page's order are merged; the page's calls are then looked up."""
    order = params.choice("order", ("time", "risk"), "time")
    limit, offset = page(params)
    flags: dict[str, dict[str, Any]] = {}
    for part in shard_set.ask("finding-flags", {}):
        for f in part:
            seen = flags.setdefault(f["subject"], {"kinds": set(), "rank": f["rank"], "n": 0})
            seen["kinds"].update(f["kinds"])
            seen["rank"], seen["n"] = max(seen["rank"], f["rank"]), seen["n"] + f["n"]
    given_flags = [list(flags), [sorted(f["kinds"]) for f in flags.values()],
                   [f["rank"] for f in flags.values()], [f["n"] for f in flags.values()]]
    given_calls = None
    if actions_q.with_call_filter(params):
        found = [c for part in shard_set.ask("matching-calls", {"params": raw}) for c in part]
        given_calls = [[c["call_id"] for c in found], *([c[k] for c in found] for k in actions_q.CALL_COLUMNS)]
    parts = shard_set.ask("actions-part", {"params": raw, "flags": given_flags, "calls": given_calls,
                                           "top": offset + limit + 1})
    merged = _ordered([r for p in parts for r in p], ("started_at", "action_id"), descending=True)
    if order == "risk":  # (a stable sort: equal risks stay newest first)
        merged.sort(key=lambda r: (r["finding_severity"], len(r["finding_kinds"] or []), r["destructive"]),
                    reverse=True)
    result = page_of(merged, limit, offset)
    found = result["rows"]
    if given_calls is None:
        ids = sorted({r["call_id"] for r in found if r["call_id"] is not None})
        calls = {c["call_id"]: c for p in (shard_set.ask("call-columns", {"ids": ids}) if ids else [])
                 for c in p}
        for row in found:
            call = calls.get(row["call_id"], {})
            row.update({k: call.get(k) for k in actions_q.CALL_COLUMNS})
    return {**result, "rows": actions_q.shown(found), "order": order}


def retention_apply(shard_set: Shards, dry_run: bool, principal: Principal) -> dict[str, Any]:
    """Every shard's retention run (each with the front's holds), as one answer: each
    step's rows added up over the shards, and each shard's run beside."""
    runs = shard_set.ask("retention-apply", {"dry_run": dry_run, "principal": [principal.name, principal.role]})
    steps: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        for step in run["steps"]:
            into = steps.setdefault((step["policy"], step["table"], step["action"]), {**step, "rows": 0, "held_rows": 0})
            into["rows"] += step["rows"]
            into["held_rows"] += step["held_rows"]
    return {**runs[0], "run_id": ", ".join(r["run_id"] for r in runs), "steps": list(steps.values()),
            "rows": sum(r["rows"] for r in runs), "held_rows": sum(r["held_rows"] for r in runs),
            "shards": [{"shard": name, **run} for name, run in zip(shard_set.names, runs)]}


def retention_report(shard_set: Shards, period: tuple[str, str]) -> dict[str, Any]:
    """Every shard's report as one: rows held per class added up, every shard's purges; the
    holds and the access log are the front's; each shard's ledger head and digest beside."""
    reports = shard_set.ask("retention-report", {"from": period[0], "to": period[1]})
    held: dict[tuple, dict[str, Any]] = {}
    for report in reports:
        for h in report["held"]:
            into = held.setdefault((h["data_class"], h["table_name"]), {**h, "rows": 0, "held_rows": 0})
            if h["table_name"] == "deployments":  # (in every shard: counted once)
                into["rows"], into["held_rows"] = max(into["rows"], h["rows"]), max(into["held_rows"], h["held_rows"])
            else:
                into["rows"] += h["rows"]
                into["held_rows"] += h["held_rows"]
            times = [t for t in (into["oldest"], h["oldest"]) if t]
            into["oldest"] = min(times) if times else None
            into["newest"] = max((t for t in (into["newest"], h["newest"]) if t), default=None)
    purges = sorted((p for r in reports for p in r["purges"]), key=lambda p: (p["purged_at"], p["purge_id"]))
    return {**reports[0], "held": list(held.values()), "purges": purges,
            "shards": [{"shard": name, "ledger": r["ledger"], "latest_digest": r["latest_digest"]}
                       for name, r in zip(shard_set.names, reports)]}


def archive_partition(shard_set: Shards, table: str, day: str) -> tuple[bytes, int]:
    """One day of one table from every shard, as one Parquet file in the order one store
    writes it (governance records, which every shard holds, once)."""
    frames = [pl.read_parquet(io.BytesIO(base64.b64decode(part)))
              for part in shard_set.ask("archive-partition", {"table": table, "day": day})]
    frame = pl.concat(frames, how="vertical")
    if table == "deployments":
        frame = frame.unique(maintain_order=True)
    frame = frame.sort(frame.columns, nulls_last=True)
    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=True)
    return buffer.getvalue(), frame.height


def verify(shard_set: Shards) -> dict[str, Any]:
    return verifications(shard_set.names, shard_set.ask("verify", {}))


def verifications(names: list[str], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Every shard's verification as one; a problem names the shard it was found in."""
    problems, warnings = [], []
    rows: dict[str, int] = {}
    for name, report in zip(names, reports):
        problems += [{**p, "shard": name, "where": f"{name}: {p['where']}"} for p in report["problems"]]
        warnings += [f"{name}: {w}" for w in report["warnings"]]
        for table, count in report["rows_checked"].items():
            rows[table] = rows.get(table, 0) + count
    first = problems[0] if problems else None
    keys = {r["digests"]["public_key_sha256"] for r in reports} - {None}
    return {"ok": not problems,
            "first_problem": f"{first['where']}: {first['message']}" if first else None,
            "problems": problems, "warnings": warnings,
            "ledger": {"entries": sum(r["ledger"]["entries"] for r in reports)},
            "rows_checked": rows,
            "digests": {"checked": sum(r["digests"]["checked"] for r in reports),
                        "latest": max((r["digests"]["latest"] for r in reports if r["digests"]["latest"]),
                                      default=None),
                        "public_key_sha256": keys.pop() if len(keys) == 1 else None},
            "shards": [{"shard": name, **report} for name, report in zip(names, reports)]}
