"""Where the stored rows of a large table are, by key: the warehouse's own key index.

Every write must know, for each incoming record, whether its key is stored already and at
which version (highest version wins). DuckDB can answer that with a primary key, but its
ART index holds every key in memory (~100 bytes a row for a text key, ~40 for a 64-bit
one), cannot be evicted, and must fit whole when the store checkpoints: the warehouse's
memory grew with the store until DuckDB stopped it. Without an index, the lookup scans
the key columns of the whole table on every poll, so its cost grows with the store too.

This index holds, for each stored key of the large tables (`tables.SELF_INDEXED`), a 64-bit
hash of the key and the second of the row's `observed_at`: 12 bytes a row, in sorted numpy
arrays. It answers two questions without touching DuckDB:

- *is this key certainly new?* A key whose hash is absent was never stored (equal keys
  have equal hashes), so most of a batch, the new keys, needs no lookup at all;
- *where could its stored row be?* (also asked by the query API for a lookup by key) For the others the warehouse asks DuckDB for the rows
  with those keys, restricted to the `observed_at` seconds the index gives; rows are
  appended in `observed_at` order, so DuckDB's per-row-group min/max skips all the rest.
  That query gives the exact stored version (a hash collision just finds nothing there).

The index is derived data: it is built from the table when the store opens (streaming the
key columns, about a second per few million rows) and extended after each commit; its
spilled runs are scratch files, never read back after a restart. A row whose `observed_at` is null gets NO_TIME, and a lookup that meets it
reads the whole table (correct, only slower).

Storage is a log-structured set of sorted runs: each commit adds a small run, and runs
are merged while the newer one is at least half the size of the one before it, so there
are O(log n) runs and each key is merged O(log n) times. A newer run's entry for a key
overrides an older one's (a replaced row has a newer `observed_at`). A run that grows to
`spilled_runs.SPILL_ENTRIES` moves to a file and is read through a memory map, so what the
index holds in memory stays bounded however large the store grows (spilled_runs.py).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import polars as pl

from warehouse.spilled_runs import Run, SpillDirectory, merged, merged_in_memory, placed, release, resident_bytes

# The time of a row whose observed_at is null: a lookup that meets it reads every row.
NO_TIME = np.uint32(0)
ABSENT = -1
_SEED = 0x6E696D7472  # any fixed seed: hashes only live in this process


def key_hashes(frame: pl.DataFrame, key: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's key columns (polars' hash: fixed within one process,
    which is all the index needs, since it is rebuilt on every start)."""
    if len(key) == 1:
        column = pl.col(key[0]).cast(pl.Utf8)
    else:
        column = pl.concat_str([pl.col(k).cast(pl.Utf8) for k in key], separator="\x1f", ignore_nulls=False)
    return frame.select(column.hash(seed=_SEED)).to_series().to_numpy()


def seconds(frame: pl.DataFrame, column: str = "observed_at") -> np.ndarray:
    """The whole seconds since 1970 of a datetime column, NO_TIME where it is null."""
    secs = pl.col(column).dt.epoch("s")
    # A time that does not fit is as good as none: its lookups read every row.
    fits = secs.is_between(1, np.iinfo(np.uint32).max).fill_null(False)
    return frame.select(pl.when(fits).then(secs).otherwise(int(NO_TIME)).cast(pl.UInt32)).to_series().to_numpy()


class KeyIndex:
    """Key hash -> second of the stored row's observed_at, for one table."""

    def __init__(self, spill: SpillDirectory | None = None) -> None:
        # Sorted runs, oldest (largest) first: (hashes uint64, seconds uint32).
        self._runs: list[Run] = []
        self._spill = spill

    def __len__(self) -> int:
        return sum(len(h) for h, _ in self._runs)

    @property
    def nbytes(self) -> int:
        """What the index holds in memory (its spilled runs are in files)."""
        return sum(resident_bytes(*run) for run in self._runs)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash: the second recorded for it (int64), ABSENT where none is."""
        found = np.full(len(hashes), ABSENT, dtype=np.int64)
        pending = np.arange(len(hashes))
        # Newest first: it overrides. One list: add() swaps it whole.
        for run_hashes, run_seconds in reversed(self._runs):
            if not len(pending):
                break
            wanted = hashes[pending]
            at = np.searchsorted(run_hashes, wanted)
            at_clipped = np.minimum(at, len(run_hashes) - 1)
            hit = (at < len(run_hashes)) & (run_hashes[at_clipped] == wanted)
            found[pending[hit]] = run_seconds[at_clipped[hit]]
            pending = pending[~hit]
            release(run_hashes, run_seconds)
        return found

    def add(self, hashes: np.ndarray, secs: np.ndarray) -> None:
        """Record these keys (as written by one commit) at these seconds."""
        if not len(hashes):
            return
        # A new list, swapped in whole: the query API's threads read the index while the
        # writer adds to it, and must see one list of runs, never one half-merged.
        self._runs = _with_run(self._runs, _newest_first(hashes, secs), self._spill)

    def clear(self) -> None:
        self._runs = []

    def extend_from(self, batches: Iterable[pl.DataFrame], key: list[str]) -> None:
        """Add the keys of stored rows, read back from the table in batches."""
        for batch in batches:
            self.add(key_hashes(batch, key), seconds(batch))


class ValueIndex:
    """Value hash -> every second of `observed_at` in which a row holding that value in one
    column was written: the lookup columns (`tables.LOOKUP_COLUMNS`), by which queries find
    rows that are not found by their key (a call's actions by call id, the findings about a
    subject). An entry is 8 bytes, the high 32 bits of the value's hash and the second packed
    in one uint64, kept sorted in runs like KeyIndex's; a hash prefix shared by two values
    only makes a lookup read more row groups, never miss one.

    Entries are only ever added, before the write that holds them commits: the index names a
    superset of where the rows are (a replaced or rolled-back row leaves a second that holds
    nothing, which costs a read and no answer). So a value the index has never seen is in no
    row, and a lookup needs no read at all.
    """

    def __init__(self, spill: SpillDirectory | None = None) -> None:
        self._runs: list[Run] = []  # each a 1-tuple: the packed entries
        self._spill = spill

    def __len__(self) -> int:
        return sum(len(run[0]) for run in self._runs)

    @property
    def nbytes(self) -> int:
        """What the index holds in memory (its spilled runs are in files)."""
        return sum(resident_bytes(*run) for run in self._runs)

    def seconds(self, value_hashes: np.ndarray) -> np.ndarray:
        """Every second recorded for any of these hashes (sorted, unique; may include
        NO_TIME): one search per run for all of them, not one per hash."""
        # Entries pack the hash's upper 32 bits above the second: a hash's entries lie
        # between its bits followed by 0 and by 0xFFFF_FFFF.
        upper = (value_hashes.astype(np.uint64) >> np.uint64(32)) << np.uint64(32)
        lo, hi = upper, upper | np.uint64(0xFFFF_FFFF)
        found = []
        for (run,) in self._runs:  # one list: add() swaps it whole
            starts, ends = np.searchsorted(run, lo), np.searchsorted(run, hi, side="right")
            lengths = ends - starts
            if lengths.any():
                # every position in every [start, end) range, without a loop per hash
                offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
                found.append(np.array(run[offsets + np.arange(int(lengths.sum()))]))
            release(run)
        return np.unique((np.concatenate(found) if found else np.empty(0, np.uint64)) & 0xFFFF_FFFF)

    def add(self, hashes: np.ndarray, secs: np.ndarray) -> None:
        if not len(hashes):
            return
        packed = ((hashes >> np.uint64(32)) << np.uint64(32)) | secs.astype(np.uint64)
        self._runs = _with_run(self._runs, (np.unique(packed),), self._spill)

    def clear(self) -> None:
        self._runs = []

    def extend_from(self, batches: Iterable[pl.DataFrame], column: str) -> None:
        """Add the values of stored rows (a list column gives each of its items)."""
        for batch in batches:
            values = batch.select(column, "observed_at")
            if isinstance(values.schema[column], pl.List):
                values = values.explode(column)
            values = values.drop_nulls(column)
            self.add(key_hashes(values, [column]), seconds(values))


def _with_run(runs: list[Run], run: Run, spill: SpillDirectory | None) -> list[Run]:
    """`runs` (oldest and largest first) with `run` added: runs are merged while the newer
    one is at least half the size of the one before it, so there are O(log n) of them."""
    runs = [*runs, placed(run, spill)]
    while len(runs) > 1 and 2 * len(runs[-1][0]) >= len(runs[-2][0]):
        newer = runs.pop()
        runs.append(merged(runs.pop(), newer, spill))
    return runs


def _newest_first(hashes: np.ndarray, secs: np.ndarray) -> Run:
    """One commit's keys as a run: sorted, one entry per hash, the last one given winning."""
    return merged_in_memory((hashes[:0], secs[:0]), (hashes, secs))
