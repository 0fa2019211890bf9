"""Handing freed heap memory back to the system, for the long-running stages.

glibc keeps memory a process freed for reuse: the top of the main heap past a threshold
is returned, but free pages inside it and in the other threads' arenas are kept. A
stage that frees as much as it allocates (the processor evicts ~250,000 join state
entries a minute at 5,000 spans/s; Kafka's client threads allocate and free every
batch) therefore grows its RSS with no more live data: in a soak at that rate one
`malloc_trim(0)` took a processor from 610 to 544 MB. Each stage calls `trim()` after a
restore and `Trimmer.maybe()` from its loop, at most once a minute (a trim took 7 ms
when it had 67 MB to give back, 0.1 ms when it had none; trimming every ten seconds
instead changed no stage's RSS in a soak, BENCHMARKS.md).

Two of glibc's defaults also hold memory in such a process, so `configure()` sets them
when a stage starts: blocks from 128 KiB up are given their own mapping, returned whole
when freed (by default the first free of such a block raises that threshold, up to 32 MiB,
and later Kafka messages and encoded batches of that size are carved out of the heap,
leaving holes between live objects); and two arenas, not eight per core (each of Kafka's
and the HTTP servers' threads otherwise gets an arena of its own, and keeps its free
pages there).
"""

from __future__ import annotations

import ctypes
import time

EVERY_S = 60.0
# mallopt(3) parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2


def _libc():
    return ctypes.CDLL("libc.so.6")


def configure() -> None:
    """Set the allocator for a long-running stage (see above); before its threads start."""
    try:
        libc = _libc()
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator decides


def trim() -> None:
    """Hand the heap pages freed since to the system (a no-op where libc is not glibc)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator decides


class Trimmer:
    def __init__(self, every: float = EVERY_S, clock=time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._next = clock() + every

    def maybe(self) -> bool:
        """Trim if the last trim was at least `every` seconds ago; whether it did."""
        if self._clock() < self._next:
            return False
        trim()
        self._next = self._clock() + self._every
        return True
