"""Stages hand freed heap memory back at most once a minute (nimtrail/heap.py)."""

from __future__ import annotations

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
