"""The changelog's chunk bookkeeping (processors/chunks.py), on a simulated compacted log.

The log is a list of (key, value); "compaction" keeps the last message of every key, may
drop any earlier one, and may drop a key whole when its last message is a tombstone (what
Kafka does: the cleaner removes superseded messages, and tombstones after
delete.retention.ms). Restoring from any such view must give the state as written.
"""

from __future__ import annotations

import random

import orjson
import pytest

from processors.chunks import Chunks, chunk_key, decode_chunk, is_chunk


def value(n: int) -> bytes:
    return orjson.dumps({"n": n})


def compacted(log: list[tuple[str, bytes | None]], rng: random.Random) -> list[tuple[str, bytes | None]]:
    last = {key: i for i, (key, _) in enumerate(log)}
    gone = {key for key, i in last.items() if log[i][1] is None and rng.random() < 0.5}
    return [(key, v) for i, (key, v) in enumerate(log)
            if key not in gone and (last[key] == i or rng.random() < 0.3)]


def restore(view: list[tuple[str, bytes | None]]) -> tuple[Chunks, dict[str, int]]:
    """What the service does on start: legacy keys by latest value, then chunks in order."""
    latest: dict[str, bytes | None] = {}
    chunks = []
    for key, v in view:
        if is_chunk(key):
            chunks.append((key, v))
        else:
            latest[key] = v
    store = Chunks()
    state = store.restore({k: v for k, v in latest.items() if v is not None}, chunks)
    return store, {k: (orjson.loads(v) if isinstance(v, bytes) else v)["n"] for k, v in state.items()}


def live_keys(log: list[tuple[str, bytes | None]]) -> set[str]:
    latest = dict(log)
    return {k for k, v in latest.items() if v is not None}


def test_superseded_chunks_are_tombstoned_only_after_their_successors_were_acknowledged():
    store, log = Chunks(), []
    first = store.write([("a", value(1)), ("b", value(1))])
    assert [k for k, _ in first] == [chunk_key(0)]
    store.acknowledged()
    second = store.write([("a", value(2)), ("b", value(2))])
    assert [k for k, v in second if v is None] == []  # chunk 0 is superseded, but not yet durably
    store.acknowledged()
    third = store.write([])
    assert third == [(chunk_key(0), None)]
    store.acknowledged()
    log += first + second + third
    assert live_keys(log) == {chunk_key(1)}
    assert restore(log)[1] == {"a": 2, "b": 2}


def test_a_deletion_marker_keeps_its_chunk_until_the_value_it_shadows_is_tombstoned():
    store, log = Chunks(), []

    def step(changes):
        out = store.write(changes)
        store.acknowledged()
        log.extend(out)
        return out

    step([("a", value(1)), ("b", value(1))])  # chunk 0
    step([("a", value(2))])  # chunk 1; chunk 0 still holds b
    step([("a", None)])  # chunk 2: marker for a, shadowing a=1 in chunk 0 and a=2 in chunk 1
    assert restore(log)[1] == {"b": 1}
    step([])
    assert (chunk_key(1), None) in log  # chunk 1 held nothing needed once a moved on
    # Compaction may drop chunk 1 entirely (value and tombstone): the marker still hides a=1.
    view = [(k, v) for k, v in log if k != chunk_key(1)]
    assert restore(view)[1] == {"b": 1}
    assert chunk_key(2) in live_keys(log)  # the marker is needed while chunk 0 lives
    step([("b", value(2))])  # chunk 3: chunk 0 is now superseded
    # Chunk 0's tombstone, and chunk 2's after it: the marker shadowed only chunk 0, and a
    # partial write keeps the older tombstone (the log of one partition is a prefix).
    assert step([]) == [(chunk_key(0), None), (chunk_key(2), None)]
    assert step([]) == []
    assert live_keys(log) == {chunk_key(3)}
    assert restore(log)[1] == {"b": 2}
    for seed in range(50):
        assert restore(compacted(log, random.Random(seed)))[1] == {"b": 2}


def test_deleting_what_was_never_written_writes_nothing():
    store = Chunks()
    assert store.write([("a", None)]) == []
    store.acknowledged()
    assert store.write([("a", value(1))])[0][0] == chunk_key(0)


def test_large_changes_are_split_into_several_chunks():
    store = Chunks()
    out = store.write([(f"e{i}", value(i) + b" " * 100) for i in range(10)], target=300)
    assert 3 <= len(out) <= 5 and all(is_chunk(k) for k, _ in out)
    store.acknowledged()
    assert restore(out)[1] == {f"e{i}": i for i in range(10)}


def test_the_older_one_entry_per_key_layout_is_restored_and_retired():
    legacy = [("model_call|x", value(1)), ("model_call|y", value(1)), ("agent|z", value(1)),
              ("model_call|gone", value(1)), ("model_call|gone", None)]
    store, state = restore(legacy)
    assert state == {"model_call|x": 1, "model_call|y": 1, "agent|z": 1}
    log = list(legacy)
    for changes in ([("model_call|x", value(2)), ("agent|z", None)], [], []):
        log += store.write(changes)
        store.acknowledged()
    latest = dict(log)
    assert latest["model_call|x"] is None and latest["agent|z"] is None  # retired keys
    assert latest["model_call|y"] is not None  # still the only record of y
    assert restore(log)[1] == {"model_call|x": 2, "model_call|y": 1}
    for seed in range(50):
        assert restore(compacted(log, random.Random(seed)))[1] == {"model_call|x": 2, "model_call|y": 1}


@pytest.mark.parametrize("seed", range(200))
def test_any_compaction_of_the_log_restores_the_state_as_written(seed: int):
    """Random sets and deletions over a few entries, written in batches; now and then the
    service crashes — after all, some, or none of a batch's messages were written — and
    restarts from a compacted view of the log. The state restored is always the state
    written, and once everything is deleted the log holds no live chunk."""
    rng = random.Random(seed)
    ids = [f"e{i}" for i in range(8)]
    log: list[tuple[str, bytes | None]] = [(i, value(-1)) for i in ids[:3]]  # an older layout's start
    store, state = restore(log)
    counter = 0
    for _ in range(60):
        changes = {}
        for entry_id in rng.sample(ids, rng.randrange(0, 5)):
            if rng.random() < 0.3:
                changes[entry_id] = None
            else:
                counter += 1
                changes[entry_id] = counter
        for entry_id in store.sparse_values():  # what the service writes again, unchanged
            changes.setdefault(entry_id, state[entry_id])
        out = store.write(sorted((k, None if v is None else value(v)) for k, v in changes.items()))
        crash = rng.random() < 0.15
        written = out[:rng.randrange(len(out) + 1)] if crash else out
        log += written
        for key, v in written:
            if v is not None and is_chunk(key):
                for entry_id, doc in orjson.loads(v)["e"].items():
                    if doc is None:
                        state.pop(entry_id, None)
                    else:
                        state[entry_id] = doc["n"]
        if crash:
            store, restored = restore(compacted(log, rng))
            assert restored == state
        else:
            store.acknowledged()
    # Delete everything; a few writes later every chunk is tombstoned.
    log += store.write([(i, None) for i in ids])
    store.acknowledged()
    for _ in range(4):
        log += store.write([])
        store.acknowledged()
    assert restore(log)[1] == {}
    assert live_keys(log) == set()
    assert restore(compacted(log, rng))[1] == {}


def test_entries_kept_apart_get_chunks_of_their_own():
    store = Chunks()
    written = store.write([("a", value(1)), ("forgotten|1", value(1)), ("b", value(1))], apart=("forgotten|",))
    assert [sorted(decode_chunk(v)) for _k, v in written] == [["a", "b"], ["forgotten|1"]]


@pytest.mark.parametrize("rewrite", [False, True])
def test_a_long_lived_entry_does_not_keep_the_markers_of_everything_written_beside_it(rewrite):
    """Each write adds 100 entries and deletes the previous 100; one entry written in the
    first chunk never changes. Without writing it again, its chunk and every deletion
    marker since stay in the bookkeeping; written again, both stay bounded."""
    store = Chunks()
    held = {"long": 0}
    for step in range(200):
        changes = {f"e{step}-{i}": value(step) for i in range(100)}
        if step == 0:
            changes["long"] = value(0)
        else:
            changes.update({f"e{step - 1}-{i}": None for i in range(100)})
        if rewrite:
            changes.update({entry_id: value(held[entry_id]) for entry_id in store.sparse_values()})
        store.write(sorted(changes.items()))
        store.acknowledged()
    if rewrite:
        assert len(store.markers) <= 100 and len(store.holds) <= 2
    else:
        assert len(store.markers) > 19_000 and len(store.holds) > 190
