"""Stages hand freed heap memory back at most once a minute (nimtrail/heap.py)."""

from __future__ import annotations

import subprocess
import sys

from nimtrail import heap
from tests.harness import REPO


def test_the_trimmer_trims_once_an_interval_however_often_it_is_asked(monkeypatch):
    trims = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(now[0]))
    now = [0.0]
    trimmer = heap.Trimmer(every=60.0, clock=lambda: now[0])
    for second in range(0, 200):  # asked every batch
        now[0] = float(second)
        trimmer.maybe()
    assert trims == [60.0, 120.0, 180.0]


def test_trim_is_harmless_when_called():
    heap.trim()  # glibc here: returns what it can; elsewhere: nothing to do


# Run in a fresh interpreter: glibc serves a block from any free chunk of the heap large
# enough before it maps one, and a long test process has such chunks.
_LARGE_BLOCK_CHECK = """
import ctypes, sys
from nimtrail import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    heap.map_large_blocks()
libc.free(libc.malloc(4 * 1024 * 1024))  # by default, raises the threshold to 4 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(heap.MMAP_THRESHOLD + 64 * 1024)
print("mapped" if libc.mallinfo2().hblks == before + 1 else "heap")
"""


def _where_the_next_large_block_goes(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", _LARGE_BLOCK_CHECK, mode], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_after_map_large_blocks_a_freed_large_block_does_not_move_the_next_ones_into_the_heap():
    """glibc's default: freeing a mapped block raises the threshold to its size, so later
    blocks of that size come from the heap and leave holes there when freed."""
    assert _where_the_next_large_block_goes("default") == "heap"
    assert _where_the_next_large_block_goes("fixed") == "mapped"  # returned whole when freed


def test_limiting_arenas_is_harmless_when_called():
    heap.limit_arenas()
