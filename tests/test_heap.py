"""Stages hand freed heap memory back at most once a minute (nimtrail/heap.py)."""

from __future__ import annotations

import ctypes

from nimtrail import heap


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def test_after_map_large_blocks_a_freed_large_block_does_not_move_the_next_ones_into_the_heap():
    """glibc's default: freeing a mapped block raises the threshold to its size, so later
    blocks of that size come from the heap and leave holes there when freed."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = _MallInfo2
    heap.map_large_blocks()
    libc.free(libc.malloc(4 * 1024 * 1024))  # would raise the threshold to 4 MiB
    before = libc.mallinfo2().hblks
    block = libc.malloc(heap.MMAP_THRESHOLD + 64 * 1024)
    try:
        assert libc.mallinfo2().hblks == before + 1  # a mapping of its own, returned when freed
    finally:
        libc.free(block)


def test_limiting_arenas_is_harmless_when_called():
    heap.limit_arenas()
