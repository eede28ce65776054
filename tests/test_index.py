"""LeaderboardIndex against hand-worked cases and a plain model.

Every change goes through ``upsert`` or ``remove`` below, which call
``_check()`` at once, so a broken invariant fails where it broke.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from array import array
from collections import Counter
from collections.abc import Callable, Iterable

import pytest

from chronoscore._keys import REACHED_MAX, SCORE_MAX, SCORE_MIN, TIE_LIMIT
from shard_node import index as index_module
from shard_node.index import IndexEntry, LeaderboardIndex

# Python compares str by code point, which is also UTF-8 byte order.
# "B" < "a" (case), "\ufb01" < emoji (UTF-16 order would swap these),
# and "e\u0301" is a different user from "é" (no normalization).
ODD_USERS = "a B é e\u0301 ß Ω 日本 \ufb01 \U0001f600 a\U0001f600 a\uffff".split()
# Ids too long for one byte of length: 300, 260 and 270 bytes of UTF-8.
LONG_USERS = ["x" * 300, "é" * 130, "日" * 90]
Index = LeaderboardIndex


def upsert(
    index: Index, user: str, score: int, reached: int, metadata: bytes | None = None
) -> None:
    index.upsert(user, score, reached, metadata)
    index._check()


def remove(index: Index, user: str) -> bool:
    removed = index.remove(user)
    index._check()
    return removed


def build(entries: Iterable[tuple[str, int, int]]) -> Index:
    index = LeaderboardIndex()
    index._check()
    for user, score, reached in entries:
        upsert(index, user, score, reached)
    return index


def users(index: Index) -> list[str]:
    return [entry.user_id for entry in index]


def rank_order(entries: Iterable[IndexEntry]) -> list[IndexEntry]:
    return sorted(entries, key=lambda e: (-e.score, e.reached_us, e.user_id))


def test_empty_index() -> None:
    index = build([])

    assert len(index) == 0
    assert list(index) == [] and index.top(10) == []
    assert index.get("a") is None and index.rank_of("a") is None
    assert index.count_ahead(0, 0, "a") == 0
    assert "a" not in index
    assert remove(index, "a") is False


def test_upsert_inserts_in_rank_order() -> None:
    index = build([("low", 1, 5), ("high", 9, 5), ("late", 5, 8)])
    upsert(index, "early", 5, 2)

    assert users(index) == ["high", "early", "late", "low"]
    assert len(index) == 4
    assert index.get("late") == IndexEntry("late", 5, 8)
    assert isinstance(index.get("late"), IndexEntry)
    assert "late" in index and "Late" not in index and 5 not in index
    assert index.get("Late") is None


def test_upsert_moves_an_existing_entry() -> None:
    index = build([("a", 10, 1), ("b", 20, 1), ("c", 30, 1)])
    upsert(index, "a", 40, 2)
    assert users(index) == ["a", "c", "b"]

    upsert(index, "c", -5, 3)
    assert users(index) == ["a", "b", "c"]
    assert index.get("c") == IndexEntry("c", -5, 3)
    assert len(index) == 3

    # Writing the same position again must not disturb anything.
    upsert(index, "b", 20, 1)
    assert users(index) == ["a", "b", "c"]
    assert index.rank_of("b") == 1


def test_remove_drops_only_that_entry() -> None:
    index = build([("a", 3, 0), ("b", 2, 0), ("c", 1, 0)])
    assert remove(index, "b") is True
    assert remove(index, "b") is False

    assert users(index) == ["a", "c"]
    assert index.get("b") is None and index.rank_of("b") is None
    assert "b" not in index and index.rank_of("c") == 1
    assert len(index) == 2

    assert remove(index, "a") and remove(index, "c")
    assert len(index) == 0 and list(index) == []


AHEAD_ENTRIES = [("top", 9, 0), ("b", 5, 2), ("d", 5, 2), ("f", 5, 2)]
AHEAD_ENTRIES += [("late", 5, 4), ("neg", -1, 0), ("bottom", -9, 9)]


def test_count_ahead_of_members_and_foreign_positions() -> None:
    index = build(AHEAD_ENTRIES)

    # The run at (5, 2) holds b, d and f; a, c, e and g fall between.
    assert [index.count_ahead(5, 2, u) for u in "aceg"] == [1, 2, 3, 4]
    assert index.count_ahead(9, 0, "a") == 0
    assert index.count_ahead(9, 0, "z") == 1
    assert index.count_ahead(5, 3, "a") == 4
    assert index.count_ahead(-9, 10, "a") == 7
    assert index.count_ahead(SCORE_MAX, 0, "") == 0
    assert index.count_ahead(SCORE_MIN, REACHED_MAX, "\U0010ffff") == 7

    # A member's own position counts only the entries ahead of it.
    for rank, (user, score, reached) in enumerate(AHEAD_ENTRIES):
        assert index.rank_of(user) == rank
        assert index.count_ahead(score, reached, user) == rank


def test_top_and_iteration_follow_rank_order() -> None:
    index = build(reversed(AHEAD_ENTRIES))
    expected = [IndexEntry(*entry) for entry in AHEAD_ENTRIES]

    assert index.top(0) == []
    assert index.top(1) == [IndexEntry("top", 9, 0)]
    assert index.top(3) == expected[:3]
    assert index.top(100) == expected
    assert list(index) == expected


def test_from_entries_then_later_changes() -> None:
    raw = [("x", 5, 2), ("y", 1, 1), ("w", 5, 2)] + [(u, 5, 2) for u in ODD_USERS]
    entries = rank_order(IndexEntry(*entry) for entry in raw)
    index = LeaderboardIndex.from_entries(entries)
    index._check()

    assert list(index) == entries
    assert len(index) == len(entries)
    assert list(LeaderboardIndex(reversed(entries))) == entries
    for rank, entry in enumerate(entries):
        assert index.rank_of(entry.user_id) == rank

    # Later upserts must renumber the tie run from_entries wrote.
    upsert(index, "c", 5, 2)
    upsert(index, "y", 5, 2)
    assert remove(index, "w")
    model = {e.user_id: e for e in entries if e.user_id != "w"}
    model |= {"c": IndexEntry("c", 5, 2), "y": IndexEntry("y", 5, 2)}
    assert list(index) == rank_order(model.values())

    assert len(LeaderboardIndex.from_entries([])) == 0

    # Any order builds the same index, ties numbered by user id.
    shuffled = list(entries)
    random.Random(4).shuffle(shuffled)
    index = LeaderboardIndex.from_entries(shuffled)
    index._check()
    assert list(index) == entries
    with pytest.raises(ValueError, match="twice"):
        LeaderboardIndex.from_entries([*entries, entries[0]])


def test_scores_zero_and_negative() -> None:
    index = build([("zero", 0, 0), ("minus", -1, 0), ("plus", 1, 0)])
    upsert(index, "deep", -(10**12), 0)

    assert users(index) == ["plus", "zero", "minus", "deep"]
    assert index.get("zero") == IndexEntry("zero", 0, 0)
    assert index.count_ahead(0, 0, "a") == 1
    assert index.count_ahead(-1, 1, "a") == 3


def test_int64_extreme_scores_and_times() -> None:
    late, low, high = REACHED_MAX, SCORE_MIN, SCORE_MAX
    entries = [("min-late", low, late), ("max", high, 0), ("mid", 0, 0)]
    entries += [("min", low, 0), ("max-late", high, late)]
    entries += [("min+1", low + 1, late), ("max-1", high - 1, 0)]
    index = build(entries)
    order = ["max", "max-late", "max-1", "mid", "min+1", "min", "min-late"]

    assert users(index) == order
    for user, score, reached in entries:
        assert index.get(user) == IndexEntry(user, score, reached)
    assert index.count_ahead(SCORE_MAX, 0, "") == 0
    assert index.count_ahead(SCORE_MIN, 1, "a") == 6
    assert list(LeaderboardIndex.from_entries(index)) == list(index)

    upsert(index, "max", SCORE_MIN, REACHED_MAX)
    assert users(index)[-2:] == ["max", "min-late"]
    assert index.get("max") == IndexEntry("max", SCORE_MIN, REACHED_MAX)


def test_a_key_of_zero_is_a_live_entry() -> None:
    # The best possible position on handle 0 makes the key 0 itself.
    index = LeaderboardIndex.from_columns(["top", "gone"], [SCORE_MAX, 1], [0, 0])
    assert index._key_of[0] == 0
    assert remove(index, "gone")
    for i in range(20):
        upsert(index, f"g{i}", i, 1)
    assert index.get("top") == IndexEntry("top", SCORE_MAX, 0)
    assert index.rank_of("top") == 0 and "top" in index.user_ids()


def test_scores_above_2_53_keep_exact_order() -> None:
    big = 2**53
    # These differ by 1 but not as floats.
    assert float(big + 1) == float(big)
    scores = [big + 1, big, big + 2, -big - 1, -big, 2**62 + 1, 2**62]
    index = build((f"s{i}", score, 0) for i, score in enumerate(scores))

    assert [entry.score for entry in index] == sorted(scores, reverse=True)
    assert all(type(entry.score) is int for entry in index)
    assert index.get("s0") == IndexEntry("s0", big + 1, 0)
    ranks = [index.rank_of(f"s{i}") for i in range(len(scores))]
    assert ranks == [3, 4, 2, 6, 5, 0, 1]
    assert index.count_ahead(big + 1, 1, "") == 4
    assert index.count_ahead(-big, 0, "s3") == 5


def test_many_equal_scores_order_by_time() -> None:
    times = random.Random(7).sample(range(10_000), 300)
    index = build((f"u{i}", 42, t) for i, t in enumerate(times))
    ordered = sorted(times)

    assert [entry.reached_us for entry in index] == ordered
    for i, t in enumerate(times):
        assert index.rank_of(f"u{i}") == ordered.index(t)


def test_tie_run_orders_by_user_code_points() -> None:
    shuffled = ODD_USERS[:]
    random.Random(3).shuffle(shuffled)
    index = build((user, 10, 500) for user in shuffled)
    upsert(index, "zz-before", 10, 499)
    upsert(index, "\x01after", 10, 501)
    run = sorted(ODD_USERS)

    assert users(index) == ["zz-before", *run, "\x01after"]
    assert run.index("B") < run.index("a")
    assert run.index("\ufb01") < run.index("\U0001f600")
    for rank, user in enumerate(run, start=1):
        assert index.rank_of(user) == rank
        assert index.count_ahead(10, 500, user) == rank


def test_remove_from_middle_of_tie_run_then_readd() -> None:
    names = ["a", "b", "c", "d", "e"]
    index = build((name, 3, 3) for name in names)
    assert remove(index, "c")

    assert users(index) == ["a", "b", "d", "e"]
    assert index.rank_of("d") == 2
    assert index.count_ahead(3, 3, "c") == 2

    upsert(index, "c", 3, 3)
    assert users(index) == names
    assert index.rank_of("c") == 2 and index.rank_of("e") == 4

    # Leave the run by a move, come back, and let a newcomer cut in.
    upsert(index, "b", 4, 3)
    assert users(index) == ["b", "a", "c", "d", "e"]
    upsert(index, "b", 3, 3)
    upsert(index, "ca", 3, 3)
    assert users(index) == ["a", "b", "c", "ca", "d", "e"]


def test_handles_are_reused_after_remove() -> None:
    index = build((f"old{i}", 5, 5) for i in range(6))
    for i in (1, 3, 4):
        assert remove(index, f"old{i}")
    upsert(index, "new1", 5, 5)
    upsert(index, "aaa", 5, 5)
    upsert(index, "new3", 9, 0)

    # Reused handles must name the new users, never the removed ones.
    assert len(index._key_of) == 6
    assert users(index) == ["new3", "aaa", "new1", "old0", "old2", "old5"]
    assert index.get("old3") is None
    assert index.get("new1") == IndexEntry("new1", 5, 5)
    assert index.rank_of("old0") == 3

    upsert(index, "old1", 1, 1)
    assert index.rank_of("old1") == 6
    assert len(index) == 7


def full_tie_run(*extra: IndexEntry) -> Index:
    run = [IndexEntry(f"u{i:05d}", 5, 7) for i in range(TIE_LIMIT)]
    index = LeaderboardIndex.from_entries([*run, *extra])
    index._check()
    return index


def test_from_entries_rejects_an_overlong_tie_run() -> None:
    assert len(full_tie_run()) == TIE_LIMIT
    with pytest.raises(OverflowError):
        full_tie_run(IndexEntry("u99999", 5, 7))


@pytest.mark.parametrize("user", ["newcomer", "outsider"])
def test_upsert_into_a_full_tie_run_leaves_index_unchanged(user: str) -> None:
    index = full_tie_run(IndexEntry("outsider", 1, 1))
    before = index.get(user)
    with pytest.raises(OverflowError):
        index.upsert(user, 5, 7)

    assert index.get(user) == before
    assert len(index) == TIE_LIMIT + 1
    assert len(list(index)) == TIE_LIMIT + 1
    index._check()
    assert remove(index, "outsider") is True


def test_users_with_non_ascii_and_long_ids() -> None:
    names = ODD_USERS + LONG_USERS
    index = build((user, 1, i) for i, user in enumerate(names))

    assert index._lengths.typecode == "H"
    assert sorted(index.user_ids()) == sorted(names)
    for rank, user in enumerate(names):
        assert index.get(user) == IndexEntry(user, 1, rank)
        assert index.rank_of(user) == rank and user in index
    assert index.get("e") is None and "x" * 299 not in index

    # A user whose id is a prefix of another's is a different user.
    upsert(index, "x" * 299, 0, 0)
    assert remove(index, "x" * 300) and index.get("x" * 299) is not None
    assert remove(index, "é")
    assert index.get("e\u0301") == IndexEntry("e\u0301", 1, 3)
    upsert(index, "é", 2, 0)
    assert index.rank_of("é") == 0 and index.count_ahead(2, 0, "é") == 0
    assert index.count_ahead(2, 0, "\U0001f600") == 1


def test_from_columns_takes_ids_as_utf8_bytes() -> None:
    names = ODD_USERS + LONG_USERS
    scores = [i % 3 for i in range(len(names))]
    reached = [5] * len(names)
    metadata = {"ß": b"eszett", "日本": b""}
    by_str = LeaderboardIndex.from_columns(names, scores, reached, metadata=metadata)
    by_bytes = LeaderboardIndex.from_columns(
        [user.encode() for user in names],
        scores,
        reached,
        metadata={user.encode(): value for user, value in metadata.items()},
    )
    by_str._check()
    by_bytes._check()

    assert list(by_bytes) == list(by_str) == rank_order(by_str)
    assert by_bytes.metadata("ß") == by_str.metadata("ß") == b"eszett"
    assert by_bytes.metadata("日本") == b"" and len(by_bytes._metadata) == 1
    with pytest.raises(ValueError, match="twice"):
        LeaderboardIndex.from_columns([b"a", b"b", b"a"], [1, 2, 3], [0, 0, 0])
    with pytest.raises(ValueError, match="no entry"):
        LeaderboardIndex.from_columns(["a"], [1], [0], metadata={"b": b"x"})
    with pytest.raises(ValueError, match="length"):
        LeaderboardIndex.from_columns(["a", "b"], [1], [0])


def test_metadata_belongs_to_the_user_not_the_handle() -> None:
    index = build([])
    upsert(index, "a", 1, 1, b"meta-a")
    upsert(index, "b", 2, 1, b"meta-b")
    upsert(index, "a", 5, 5)
    assert index.metadata("a") == b"meta-a"
    upsert(index, "a", 5, 6, b"")
    assert index.metadata("a") == b"" and index.metadata("b") == b"meta-b"

    # A new user given b's old handle starts without metadata.
    assert remove(index, "b")
    upsert(index, "c", 3, 3)
    assert index.metadata("c") == b"" and index.metadata("b") == b""
    assert len(index._key_of) == 2


def test_freed_id_bytes_are_reused_then_compacted() -> None:
    names = [f"user{i:04d}" for i in range(200)]
    index = build((user, i, 0) for i, user in enumerate(names))
    for user in names[::2]:
        assert remove(index, user)
    live = names[1::2]

    # Freed bytes may match the live ones. A shorter id takes over a
    # freed handle's bytes; a longer one goes at the end.
    assert len(index._blob) == 200 * 8
    upsert(index, "short", 1, 1)
    assert len(index._blob) == 200 * 8
    upsert(index, "a-much-longer-user-id", 1, 2)
    assert len(index._blob) == 200 * 8 + 21
    live += ["short", "a-much-longer-user-id"]

    # Two more removals tip freed bytes over the live ones.
    for user in names[1:5:2]:
        assert index._garbage > 0
        assert remove(index, user)
        live.remove(user)
    assert index._garbage == 0
    assert len(index._blob) == sum(len(user) for user in live)

    # Removed users come back on freed handles, never on new ones.
    for user in names[::2]:
        upsert(index, user, 0, 7)
    assert len(index._key_of) == 200
    assert sorted(index.user_ids()) == sorted(live + names[::2])
    assert index.get("user0004") == IndexEntry("user0004", 0, 7)


def test_table_grows_with_the_index() -> None:
    index = LeaderboardIndex()
    sizes = set()
    for i in range(3000):
        index.upsert(f"g{i}", i % 17, i)
        sizes.add(len(index._tables[0]))
        if i % 300 == 0:
            index._check()
    index._check()

    assert len(sizes) >= 5 and len(index._tables) == 1
    assert len(index) <= len(index._tables[0]) * LeaderboardIndex._MAX_LOAD
    assert index.rank_of("g16") == 0
    assert index.get("g2999") == IndexEntry("g2999", 2999 % 17, 2999)


@pytest.fixture
def segmented(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split tables of a few hundred users into 8 segments."""
    monkeypatch.setattr(LeaderboardIndex, "_SPLIT_AT", 300)
    monkeypatch.setattr(LeaderboardIndex, "_SEGMENTS", 8)


@pytest.mark.usefixtures("segmented")
def test_table_splits_once_then_segments_grow_alone() -> None:
    index = LeaderboardIndex()
    names = [f"s{i}" for i in range(4000)]
    for i, user in enumerate(names[:300]):
        index.upsert(user, i % 7, i)
    assert len(index._tables) == 1
    upsert(index, names[300], 0, 0)
    assert len(index._tables) == 8

    sizes: set[tuple[int, ...]] = set()
    for i, user in enumerate(names[301:], start=301):
        index.upsert(user, i % 7, i)
        sizes.add(tuple(map(len, index._tables)))
        if i % 500 == 0:
            index._check()
    index._check()
    assert len(sizes) >= 20

    # Falling back below the split size keeps the segments, so growing
    # again cannot split again.
    rng = random.Random(12)
    gone = rng.sample(names, 3900)
    for i, user in enumerate(gone):
        assert index.remove(user)
        if i % 400 == 0:
            index._check()
    index._check()
    assert len(index) == 100 and len(index._tables) == 8
    for i, user in enumerate(gone[:1000]):
        index.upsert(user, 3, i)
    index._check()
    assert len(index) == 1100 and len(index._tables) == 8
    assert index.get(gone[999]) == IndexEntry(gone[999], 3, 999)
    assert sorted(index.user_ids()) == sorted(set(names) - set(gone[1000:]))


@pytest.mark.usefixtures("segmented")
def test_a_large_bulk_build_is_segmented_at_once() -> None:
    for count, segments in [(299, 1), (300, 8), (2000, 8)]:
        users, scores, reached = memory_columns(count)
        index = LeaderboardIndex.from_columns(users, scores, reached)
        index._check()
        assert len(index._tables) == segments
        assert all(index.get(user) for user in users[::97])

    # Segments built for the build's load, not grown yet.
    assert sum(index._counts) == 2000
    assert sum(map(len, index._tables)) <= 2000 / 0.55 + 8


@pytest.mark.usefixtures("segmented")
def test_one_growth_rebuilds_one_segment() -> None:
    users, scores, reached = memory_columns(5000)
    index = LeaderboardIndex.from_columns(users, scores, reached)
    before = list(index._tables)
    newcomers = [f"new{i}" for i in range(5000)]
    for i, user in enumerate(newcomers):
        index.upsert(user, 1, i)
        changed = [
            segment
            for segment, table in enumerate(index._tables)
            if table is not before[segment]
        ]
        if changed:
            break
    index._check()

    assert len(changed) == 1
    [segment] = changed
    grown = index._tables[segment]
    assert len(grown) > len(before[segment])
    assert index._counts[segment] - 1 == int(
        len(before[segment]) * LeaderboardIndex._MAX_LOAD
    )
    # Every user of the other segments stayed where they were.
    assert sum(index._counts) - index._counts[segment] < 5000 + i


def test_columns_widen_when_a_value_outgrows_them() -> None:
    column = array("B", [1, 2])
    column = index_module._stored(column, 1, 300)
    assert column.typecode == "H" and list(column) == [1, 300]
    column = index_module._stored(column, 0, 2**32)
    assert column.typecode == "Q" and list(column) == [2**32, 300]
    assert index_module._stored(column, 1, 5) is column


# Memory, for a shard of 10-character ids such as "u000123456".
MEMORY_ENTRIES = 200_000
Columns = tuple[list[str], list[int], list[int]]


def memory_columns(count: int, seed: int = 8) -> Columns:
    rng = random.Random(seed)
    users = [f"u{i:09d}" for i in rng.sample(range(10**9), count)]
    scores = [int(rng.paretovariate(1.2) * 100) for _ in range(count)]
    start = 1_796_256_000_000_000
    reached = [start + rng.randrange(10**12) for _ in range(count)]
    return users, scores, reached


def traced(make: Callable[[], Index]) -> tuple[Index, int]:
    """What ``make`` returns, and the bytes still allocated after it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = make()
        gc.collect()
        return index, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def loaded() -> tuple[Index, int]:
    """A bulk-built index, and the bytes it holds by tracemalloc."""
    columns = memory_columns(MEMORY_ENTRIES)
    return traced(lambda: LeaderboardIndex.from_columns(*columns))


def test_memory_bytes_agrees_with_tracemalloc(loaded: tuple[Index, int]) -> None:
    index, held = loaded
    assert len(index) == MEMORY_ENTRIES
    assert index.memory_bytes() == pytest.approx(held, rel=0.15)


def test_memory_per_entry_is_at_most_100_bytes(loaded: tuple[Index, int]) -> None:
    index, held = loaded
    assert {len(user) for user in index.user_ids()} == {10}
    assert index.memory_bytes() / MEMORY_ENTRIES <= 100
    assert held / MEMORY_ENTRIES <= 100


def test_memory_bytes_agrees_with_tracemalloc_after_churn() -> None:
    def churn() -> Index:
        users, scores, reached = memory_columns(10_000)
        index = LeaderboardIndex.from_columns(users, scores, reached)
        # Enough removals to rewrite the blob, and enough new users to
        # grow the table, some of them with metadata.
        for user in users[:7_000]:
            index.remove(user)
        newcomers, scores, reached = memory_columns(12_000, seed=9)
        for i, user in enumerate(newcomers):
            metadata = b"" if i % 4 == 0 else f"m{i}".encode()
            index.upsert("n" + user, scores[i], reached[i], metadata)
        return index

    index, held = traced(churn)
    assert len(index) == 15_000 and len(index._metadata) == 9_000
    assert index.memory_bytes() == pytest.approx(held, rel=0.15)


# The randomized run: small ranges so that equal scores and whole runs
# of shared (score, reached_us) are common.
POOL = [f"u{i}" for i in range(30)] + ODD_USERS + LONG_USERS
FOREIGN = [*POOL, "", "u", "zz", "\U0010ffff"]
Model = dict[str, tuple[int, int]]
Metadata = dict[str, bytes]
Rng = random.Random


def model_order(model: Model) -> list[IndexEntry]:
    return rank_order(IndexEntry(u, s, r) for u, (s, r) in model.items())


def model_ahead(model: Model, score: int, reached: int, user: str) -> int:
    here = (-score, reached, user)
    return sum((-s, r, u) < here for u, (s, r) in model.items())


ACTIONS = ["insert"] * 4 + ["move"] * 4 + ["remove"] * 3 + ["read", "rebuild"]


def step(index: Index, model: Model, metadata: Metadata, rng: Rng) -> Index:
    """Apply one random action to both the index and the model."""
    action = rng.choice(ACTIONS)
    if action in ("insert", "move"):
        pool = [u for u in POOL if (u in model) == (action == "move")]
        user = rng.choice(pool or POOL)
        model[user] = (rng.randint(-3, 3), rng.randint(0, 3))
        meta = rng.choice([None, None, b"", b"m", f"{user}:{len(model)}".encode()])
        upsert(index, user, *model[user], meta)
        if meta:
            metadata[user] = meta
        elif meta is not None:
            metadata.pop(user, None)
    elif action == "remove":
        user = rng.choice(POOL)
        assert remove(index, user) == (model.pop(user, None) is not None)
        metadata.pop(user, None)
    elif action == "read":
        assert list(index) == model_order(model)
        assert sorted(index.user_ids()) == sorted(model)
        user = rng.choice(POOL)
        expected = IndexEntry(user, *model[user]) if user in model else None
        assert index.get(user) == expected
        assert index.metadata(user) == metadata.get(user, b"")
    else:
        kept = {user: index.metadata(user) for user in index.user_ids()}
        index = LeaderboardIndex.from_entries(index, metadata=kept)
        index._check()
    return index


def compare(index: Index, model: Model, rng: Rng) -> None:
    order = model_order(model)
    assert len(index) == len(order)

    limit = rng.randint(0, len(order) + 2)
    assert index.top(limit) == order[:limit]
    for rank, entry in enumerate(order):
        assert index.rank_of(entry.user_id) == rank

    for _ in range(3):
        score, reached = rng.randint(-4, 4), rng.randint(0, 4)
        user = rng.choice(FOREIGN)
        ahead = model_ahead(model, score, reached, user)
        assert index.count_ahead(score, reached, user) == ahead


# Hashes for the user table that make users collide: all of them, all
# of one length (negative, too), or all with one first byte. Probe runs
# then wrap around the table's end, and removals shift whole runs back.
HASHES: dict[str, Callable[[bytes], int]] = {
    "builtin": hash,
    "constant": lambda name: 7,
    "length": lambda name: -len(name),
    "first-byte": lambda name: name[0] if name else 0,
}
CASES = [(seed, "builtin", 0) for seed in (11, 2024, 777)]
CASES += [(5, name, 0) for name in HASHES if name != "builtin"]
# With the table split into 4 segments as soon as 20 users are in.
CASES += [(seed, "builtin", 20) for seed in (13, 15)]
CASES += [(6, name, 20) for name in HASHES if name != "builtin"]


@pytest.mark.parametrize(("seed", "hashing", "split_at"), CASES)
def test_random_steps_match_a_plain_model(
    seed: int, hashing: str, split_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "_hash", HASHES[hashing])
    if split_at:
        monkeypatch.setattr(LeaderboardIndex, "_SPLIT_AT", split_at)
        monkeypatch.setattr(LeaderboardIndex, "_SEGMENTS", 4)
    rng = random.Random(seed)
    index = LeaderboardIndex()
    model: Model = {}
    metadata: Metadata = {}
    longest_run = compactions = splits = 0
    for _ in range(3000):
        before, blob = index, len(index._blob)
        segments = len(index._tables)
        index = step(index, model, metadata, rng)
        compare(index, model, rng)
        runs = Counter(model.values())
        longest_run = max(longest_run, *runs.values(), 0)
        compactions += index is before and len(index._blob) < blob
        splits += segments == 1 < len(index._tables)

    # The ranges must be small enough to exercise shared positions, and
    # removals frequent enough to rewrite the blob now and then.
    assert longest_run >= 3
    assert compactions >= 1, compactions
    assert (splits >= 1) == bool(split_at), splits
