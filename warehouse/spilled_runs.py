"""Sorted runs of the key index that live in files instead of the warehouse's memory.

The key index (key_index.py) holds 12 bytes per stored row of the large tables, and the
lookup columns' value indexes 8 more per value: at 9,000 rows/s that is ~8 MB a minute,
without end. Once a run reaches `SPILL_ENTRIES`, it is written to a file beside the store
and read through a memory map instead. Lookups stay vectorised numpy on the mapped
arrays (a binary search touches a few pages per key), and after every use the pages are
dropped from the process (`MADV_DONTNEED`): they stay in the kernel's page cache, which
gives them up under pressure, and the warehouse's own memory holds only the runs too
small to spill.

A spilled run's file is unlinked as soon as it is mapped: it lives exactly as long as the
arrays that read it (the query API's threads may still hold a run the writer just merged
away), and nothing is left behind by a crash except in the directory, which is emptied
when the store opens. The index is derived data either way: it is rebuilt from the table.

Merging a spilled run streams both inputs in chunks of `MERGE_CHUNK` entries into the new
file, so a merge never holds more than a chunk of either in memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

# A run of at least this many entries lives in a file (1.5 MB of a key index's run).
SPILL_ENTRIES = 1 << 17
MERGE_CHUNK = 1 << 18  # a chunk's merge holds ~20 MB of arrays for a moment


Run = tuple[np.ndarray, ...]  # sorted unique keys first, then any values beside them


class SpillDirectory:
    """Where one store's spilled runs are written: what a crash left there is removed when
    the store opens; made when a first run spills (a small store never has one)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        shutil.rmtree(self.path, ignore_errors=True)

    def written(self, chunks: Iterable[Run], dtypes: Sequence[np.dtype]) -> Run:
        """The chunks, column by column, each column written to a file as they come and
        then mapped read-only."""
        files = []
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            for _ in dtypes:
                fd, name = tempfile.mkstemp(dir=self.path, suffix=".run")
                files.append((os.fdopen(fd, "wb"), name))
            for chunk in chunks:
                for (file, _), column in zip(files, chunk):
                    file.write(column.tobytes())
            for file, _ in files:
                file.close()
            return tuple(_mapped(name, dtype) for (_, name), dtype in zip(files, dtypes))
        finally:
            for file, name in files:
                file.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)


def _mapped(name: str, dtype: np.dtype) -> np.ndarray:
    with open(name, "rb") as file:
        if not os.fstat(file.fileno()).st_size:
            return np.empty(0, dtype)
        return np.frombuffer(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ), dtype=dtype)


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    """The file mapping an array reads, if it reads one."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def is_spilled(array: np.ndarray) -> bool:
    return _mapping(array) is not None


def release(*arrays: np.ndarray) -> None:
    """Drop the pages a spilled array's use brought into the process (they stay cached)."""
    for array in arrays:
        if (mapping := _mapping(array)) is not None:
            mapping.madvise(mmap.MADV_DONTNEED)


def resident_bytes(*arrays: np.ndarray) -> int:
    """What these arrays hold in the process's memory: nothing for a spilled one."""
    return sum(0 if is_spilled(a) else a.nbytes for a in arrays)


def merged(older: Run, newer: Run, spill: SpillDirectory | None) -> Run:
    """Two runs as one: sorted unique keys, the newer's values winning for a key both hold;
    in files once it reaches SPILL_ENTRIES and `spill` is given."""
    if spill is None or len(older[0]) + len(newer[0]) < SPILL_ENTRIES:
        run = merged_in_memory(older, newer)
    else:
        run = spill.written(_merge_chunks(older, newer), [column.dtype for column in older])
    release(*older, *newer)
    return run


def placed(run: Run, spill: SpillDirectory | None) -> Run:
    """A new run (sorted, unique), moved to files if it is already large enough."""
    if spill is None or len(run[0]) < SPILL_ENTRIES:
        return run
    return spill.written([run], [column.dtype for column in run])


def _merge_chunks(older: Run, newer: Run) -> Iterator[Run]:
    """The merge of two runs, chunk by chunk in key order."""
    start_old = start_new = 0
    while start_old < len(older[0]):
        end_old = min(start_old + MERGE_CHUNK, len(older[0]))
        # Every newer key up to the chunk's last key merges with this chunk.
        end_new = int(np.searchsorted(newer[0], older[0][end_old - 1], side="right"))
        yield merged_in_memory(tuple(c[start_old:end_old] for c in older), tuple(c[start_new:end_new] for c in newer))
        release(*older, *newer)
        start_old, start_new = end_old, end_new
    yield tuple(c[start_new:] for c in newer)


def merged_in_memory(older: Run, newer: Run) -> Run:
    """Sorted, one entry per key, the newer's winning (both inputs sorted and unique)."""
    columns = [np.concatenate([o, n]) for o, n in zip(older, newer)]
    # A stable sort keeps an older entry before a newer one with the same key; the last of
    # each equal run is kept. Two sorted runs concatenated sort in linear time (timsort).
    order = np.argsort(columns[0], kind="stable")
    columns = [c[order] for c in columns]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = columns[0][1:] != columns[0][:-1]
    return tuple(c[last] for c in columns)
