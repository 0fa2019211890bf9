"""The forgotten index (processors/forgotten.py): exact within its bound, oldest forgotten
first, and the same after being written as pieces and read back."""

from __future__ import annotations

import base64

import orjson

from processors.forgotten import MERGE_FANIN, CallLink, Forgotten, is_piece

LIMIT = 2000  # small enough that the arrays are merged and trimmed many times over


def link(i: int) -> CallLink:
    return CallLink(f"chatcmpl-{i}", i % 7 + 1, f"2026-03-03T12:00:{i % 60:02d}.000000Z",
                    None if i % 3 else "prod/llama", None if i % 3 else i % 4)


def forget(index: Forgotten, first: int, count: int, changelog: dict[str, bytes]) -> None:
    """Records first..first+count leave the state, two evidence ids and two tool-call ids
    each; every 10 a state write (its pieces into `changelog`, expired pieces out)."""
    for i in range(first, first + count):
        index.add(f"model_call|chatcmpl-{i}", [f"span-{i}", f"log-{i}"], link(i), [f"tc-{i}-a", f"tc-{i}-b"])
        if i % 10 == 9:
            write(index, changelog)


def write(index: Forgotten, changelog: dict[str, bytes]) -> None:
    before = set(changelog)
    for piece, value in index.seal():  # a merged piece, then the tombstones of what it replaces
        if value is None:
            # Only what an earlier write put there: the changelog ignores any other tombstone.
            assert piece in before
            del changelog[piece]
        else:
            changelog[piece] = value
    for piece in index.expired():
        del changelog[piece]


def known(index: Forgotten, i: int) -> tuple[bool, bool, CallLink | None]:
    return (index.seen(f"model_call|chatcmpl-{i}", f"span-{i}"), index.seen(f"model_call|chatcmpl-{i}", f"log-{i}"),
            index.call(f"tc-{i}-b"))


def test_the_newest_are_known_exactly_and_the_oldest_forgotten_first():
    index, changelog = Forgotten(LIMIT), {}
    forget(index, 0, 5 * LIMIT, changelog)
    newest = range(5 * LIMIT - LIMIT // 2, 5 * LIMIT)  # LIMIT evidence ids, LIMIT tool-call ids
    assert all(known(index, i) == (True, True, link(i)) for i in newest)
    assert all(known(index, i) == (False, False, None) for i in range(0, 5 * LIMIT - LIMIT // 2))
    assert not index.seen("model_call|chatcmpl-1", "span-2")  # a pair, not either id alone
    assert len(index) == LIMIT


def test_the_index_comes_back_from_its_pieces_and_expired_pieces_leave_the_changelog():
    index, changelog = Forgotten(LIMIT), {}
    forget(index, 0, 3 * LIMIT, changelog)
    write(index, changelog)
    assert all(is_piece(p) for p in changelog)
    # Pieces are deleted once all they hold passed the bound: what is left is about the
    # bound, past it by less than the largest piece a merge makes.
    held = sum(len(base64.b64decode(orjson.loads(v).get("e", ""))) // 8 for v in changelog.values())
    assert LIMIT <= held < LIMIT + LIMIT // MERGE_FANIN
    restored = Forgotten(LIMIT)
    restored.restore((piece, orjson.loads(value)) for piece, value in changelog.items())
    assert all(known(restored, i) == known(index, i) for i in range(0, 3 * LIMIT))
    # It goes on from where it was: new pieces do not reuse the numbers of live ones.
    forget(restored, 3 * LIMIT, 10, changelog)
    assert all(known(restored, i) == (True, True, link(i)) for i in range(3 * LIMIT - LIMIT // 2 + 10, 3 * LIMIT + 10))


def test_links_not_yet_written_are_known_too():
    index = Forgotten(LIMIT)
    index.add("model_call|chatcmpl-1", ["span-1"], link(1), ["tc-1"])
    assert index.call("tc-1") == link(1) and index.seen("model_call|chatcmpl-1", "span-1")
    assert index.call("tc-2") is None and index.call(None) is None


def test_what_one_write_forgets_is_cut_into_pieces_a_message_can_hold():
    index = Forgotten(100_000)
    for i in range(5000):
        index.add(f"model_call|chatcmpl-{i}", [f"span-{i}", f"log-{i}"], link(i), [f"tc-{i}"])
    pieces = index.seal()
    assert len(pieces) > 2 and max(len(value) for _, value in pieces) < 512 * 1024
    restored = Forgotten(100_000)
    restored.restore((piece, orjson.loads(value)) for piece, value in pieces)
    assert all(known(restored, i)[0] and restored.call(f"tc-{i}") == link(i) for i in range(5000))


def test_pieces_of_small_writes_are_merged_so_that_few_stay_live():
    """A state write per forgotten record (a partition of a split join at a low rate):
    one piece a write, kept until the bound passes them, would be one per record."""
    index, changelog = Forgotten(LIMIT), {}
    for i in range(4 * LIMIT):
        index.add(f"model_call|chatcmpl-{i}", [f"span-{i}", f"log-{i}"], link(i), [f"tc-{i}-a", f"tc-{i}-b"])
        write(index, changelog)
    # Unmerged, LIMIT / 2 evidence pieces and as many of calls would be live.
    assert len(changelog) < 100
    newest = range(4 * LIMIT - LIMIT // 2, 4 * LIMIT)
    assert all(known(index, i) == (True, True, link(i)) for i in newest)
    assert not any(known(index, i)[0] or known(index, i)[2] for i in range(4 * LIMIT - LIMIT))
    restored = Forgotten(LIMIT)
    restored.restore((piece, orjson.loads(value)) for piece, value in changelog.items())
    assert all(known(restored, i) == known(index, i) for i in range(4 * LIMIT))
    # And it goes on merging and expiring from what it read back.
    for i in range(4 * LIMIT, 5 * LIMIT):
        restored.add(f"model_call|chatcmpl-{i}", [f"span-{i}"], link(i), [f"tc-{i}-b"])
        write(restored, changelog)
    assert len(changelog) < 100  # unmerged, 2 * LIMIT
    assert all(restored.call(f"tc-{i}-b") == link(i) for i in range(5 * LIMIT - LIMIT // 2, 5 * LIMIT))
