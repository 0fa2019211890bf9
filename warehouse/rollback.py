"""The store against the digests published outside it, and the age of the newest digest.

Run by `verify` after the checks of the data directory itself:

5. published: every digest on the digests topic and in the write-once copy verifies with
   the public key and is byte for byte the local file of its number (if there is one);
6. rollback:  the store's newest digest is not older than the newest published one, and
   its ledger reaches the chain entry that one signs. Removing the newest entries, their
   rows, digest files and checkpoint rows together leaves a store consistent with itself;
   it is caught here, and only here;
7. numbering: digest numbers run 1..n without a gap across all the places that hold them;
8. freshness: the warehouse signs a digest every `checkpoint_interval`, idle or not, so
   while it runs, a newest digest older than two intervals means it stopped signing or
   its newest digests were removed. A stopped store signs nothing: offline, the age is
   reported as a note, and rollback is judged against the published digests instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from warehouse import digests
from warehouse.published import Published

if TYPE_CHECKING:
    from warehouse.verify import Report

Files = dict[int, tuple[str, bytes, dict[str, Any]]]  # digest_seq -> (where, bytes, document)


@dataclass(frozen=True)
class Freshness:
    interval: float  # the warehouse's checkpoint_interval in seconds; 0: no digest is ever due
    online: bool  # the warehouse runs (verification through its API)
    now: dt.datetime  # aware, UTC


def check(report: Report, key: Ed25519PublicKey, local: Files, recorded_newest: int,
          heads: dict[int, str], published: Published, freshness: Freshness | None) -> None:
    """`local`: the data directory's digest files by number; `heads`: entry hash by ledger
    seq (0: the genesis hash)."""
    report.warnings.extend(published.notes)
    seen = _published(report, key, local, published)
    store_newest = max([recorded_newest, *local])
    head_seq = max(heads)
    if seen:
        newest = max(seen)
        where, _data, doc = seen[newest]
        chain_seq = (doc.get("chain") or {}).get("seq")
        if newest > store_newest or (isinstance(chain_seq, int) and chain_seq > head_seq):
            report.problem("rollback", where, (
                f"the store was rolled back: its newest digest is {store_newest} and its ledger "
                f"ends at entry {head_seq}, but digest {newest} (created {doc.get('created_at')}) "
                f"was published signing entry {chain_seq}"), first=True)
    for seq in sorted(set(seen) - set(local)):
        where, _data, doc = seen[seq]
        chain = doc.get("chain") or {}
        if chain.get("seq") in heads and heads[chain["seq"]] != chain.get("head"):
            report.problem("published", where, f"digest {seq} signs chain entry {chain['seq']} "
                           "with a different hash than the ledger holds: the chain was rewritten")
        elif seq < store_newest:
            report.problem("published", where, f"digest {seq} was published, but its file is "
                           "gone from the data directory")
    numbers = set(local) | set(seen)
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - numbers)
    if missing:
        places = "the data directory" + (" and every published copy" if published.sources else "")
        report.problem("numbering", f"digest {_span(missing)}",
                       f"missing from {places}: digests are numbered without gaps")
    if numbers and freshness is not None and freshness.interval > 0:
        newest = max(numbers)
        where, _data, doc = local.get(newest) or seen[newest]
        _check_age(report, where, newest, doc, freshness)


def _published(report: Report, key: Ed25519PublicKey, local: Files, published: Published) -> Files:
    """The published digests that verify, by number; problems for the others."""
    fingerprint = digests.fingerprint(key)
    seen: Files = {}
    for source in published.sources:
        for rel, data in source.files:
            where = f"{source.name}: {rel}"
            doc = digests.parse(data)
            if doc is None or not isinstance(doc.get("digest_seq"), int):
                report.problem("published", where, "not a nimtrail digest (unreadable or altered)")
                continue
            if doc.get("public_key_sha256") != fingerprint or not digests.signature_ok(doc, key):
                report.problem("published", where, "signature does not verify with the public key")
                continue
            seq = doc["digest_seq"]
            if seq in local and local[seq][1] != data:
                report.problem("published", where, f"digest {seq} is not the local file "
                               f"{local[seq][0]}: one was replaced (a store rolled back and "
                               "restarted signs new digests under numbers already published)")
            elif seq in seen and seen[seq][1] != data:
                report.problem("published", where, f"digest {seq} is not the one in {seen[seq][0]}")
            seen.setdefault(seq, (where, data, doc))
    return seen


def _check_age(report: Report, where: str, seq: int, doc: dict[str, Any], freshness: Freshness) -> None:
    created = doc.get("created_at")
    try:
        age = (freshness.now - dt.datetime.fromisoformat(str(created))).total_seconds()
    except ValueError:
        report.problem("freshness", where, f"digest {seq} has no readable creation time ({created!r})")
        return
    limit = 2 * freshness.interval
    if not freshness.online:
        report.warnings.append(f"the newest digest, {seq}, was created at {created}, "
                               f"{_duration(age)} ago (the warehouse is stopped, so its age is "
                               "not held against it)")
    elif age > limit:
        report.problem("freshness", where, (
            f"the newest digest, {seq}, was created at {created}, {_duration(age)} ago: more "
            f"than two checkpoint intervals ({_duration(limit)}); the warehouse stopped "
            "signing, or its newest digests were removed"))


def _span(numbers: list[int]) -> str:
    first, last = numbers[0], numbers[-1]
    if first == last:
        return str(first)
    return f"{first}..{last}" if last - first + 1 == len(numbers) else ", ".join(map(str, numbers[:10]))


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
