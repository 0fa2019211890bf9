"""The sweep time: how far the processor's input is known to be read."""

from processors.horizon import Horizon

A, B = ("spans", 0), ("spans", 1)


def test_a_caught_up_reader_sweeps_up_to_its_latest_snapshot():
    horizon = Horizon(interval=1.0)
    ends = {A: 10, B: 5}
    assert horizon.advance(100.0, frozenset(ends), lambda: ends, ends.get) == 100.0


def test_a_reader_behind_sweeps_only_up_to_the_time_its_position_had_been_written_by():
    horizon = Horizon(interval=1.0)
    positions = {A: 0, B: 0}
    ends = {A: 10, B: 5}
    assert horizon.advance(100.0, frozenset(ends), lambda: dict(ends), positions.get) is None
    ends = {A: 20, B: 9}
    assert horizon.advance(101.0, frozenset(ends), lambda: dict(ends), positions.get) is None
    positions.update({A: 12, B: 5})  # past the first snapshot, not the second
    assert horizon.advance(101.5, frozenset(ends), lambda: dict(ends), positions.get) == 100.0
    positions.update({A: 20, B: 9})
    assert horizon.advance(101.7, frozenset(ends), lambda: dict(ends), positions.get) == 101.0


def test_no_assignment_means_nothing_is_known_to_be_read():
    horizon = Horizon(interval=1.0)
    assert horizon.advance(100.0, frozenset(), lambda: {}, lambda tp: 0) is None


def test_a_new_assignment_forgets_what_was_reached_on_the_old_one():
    horizon = Horizon(interval=1.0)
    positions = {A: 0, B: 0}
    horizon.advance(100.0, frozenset({A}), lambda: {A: 10}, positions.get)
    positions[A] = 10
    # B came with a rebalance and is not read yet: the old snapshot no longer counts.
    assert horizon.advance(100.5, frozenset({A, B}), lambda: {A: 10, B: 3}, positions.get) is None
    positions[B] = 3
    assert horizon.advance(100.6, frozenset({A, B}), lambda: {A: 10, B: 3}, positions.get) == 100.5


def test_with_hops_a_time_is_reached_only_after_as_many_snapshots_each_taken_after_the_last_was_read():
    """What reading a snapshot's messages produced lands after it: two hops need a second
    snapshot, taken once the first was read, to be read as well."""
    horizon = Horizon(interval=1.0, hops=2)
    positions = {A: 0}
    ends = {A: 10}
    assert horizon.advance(100.0, frozenset(ends), lambda: dict(ends), positions.get) is None
    positions[A] = 10  # the first snapshot is read; what it made is written after it
    ends[A] = 15
    assert horizon.advance(100.5, frozenset(ends), lambda: dict(ends), positions.get) is None
    assert horizon.advance(101.0, frozenset(ends), lambda: dict(ends), positions.get) is None
    positions[A] = 15  # the snapshot taken at 101 (after 100 was read at 100.5) is read too
    assert horizon.advance(101.2, frozenset(ends), lambda: dict(ends), positions.get) == 100.0
    assert horizon.advance(102.5, frozenset(ends), lambda: dict(ends), positions.get) == 101.0
