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

Two more of glibc's defaults hold memory in such a process. Every thread that allocates
gets an arena of its own, up to eight per core, and keeps its free pages there:
`limit_arenas()` allows two, when a stage starts (Kafka's client threads and the HTTP
servers' then share them). And freeing a block of 128 KiB or more raises the size from
which blocks get a mapping of their own to that block's size (up to 32 MiB), so later
blocks of that size are carved out of the heap and leave holes between live objects when
freed: `map_large_blocks()` fixes the threshold at 128 KiB. The warehouse, whose polls
free a Kafka message and Arrow buffers of that size each, calls it; in a soak its heap
was 66–71 MB (58–63 in use) with it against 97 MB (58 in use) without. The processor
does not: its heap was the same either way, and reading the changelog back at start
(blocks of 512 KiB) took ~20 % longer with it.
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


def _glibc(function: str, *args: int) -> None:
    """Call one of glibc's allocator functions; elsewhere its allocator decides."""
    try:
        getattr(ctypes.CDLL("libc.so.6"), function)(*args)
    except (OSError, AttributeError):
        pass  # not glibc


def limit_arenas() -> None:
    """At most ARENA_MAX arenas (see above); before the stage's threads start."""
    _glibc("mallopt", _M_ARENA_MAX, ARENA_MAX)


def map_large_blocks() -> None:
    """Blocks from MMAP_THRESHOLD up in mappings of their own, returned whole when freed."""
    _glibc("mallopt", _M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> None:
    """Hand the heap pages freed since to the system (a no-op where libc is not glibc)."""
    _glibc("malloc_trim", 0)


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
