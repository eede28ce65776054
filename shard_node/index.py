"""The in-memory rank index of one leaderboard on one shard.

Entries live in a ``SortedList`` of int keys (see ``chronoscore._keys``)
whose ascending order is rank order, so position equals the number of
entries ahead. A dict maps each user to their key, and a list maps the
key's handle back to the user.

The index holds no durable state: the shard rebuilds it from PostgreSQL
at start, and changes it only after PostgreSQL has committed them.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from sortedcontainers import SortedList

from chronoscore import _keys

__all__ = ["IndexEntry", "LeaderboardIndex"]


class IndexEntry(NamedTuple):
    user_id: str
    score: int
    reached_us: int


class LeaderboardIndex:
    """Rank-ordered entries of one leaderboard held by one shard.

    Costs below are for n entries and t, the number of entries that
    share both score and ``reached_us`` with the one in question. A shard
    stamps distinct times on the updates it applies, so t is 0 or 1
    unless entries were copied in from another shard.
    """

    def __init__(
        self, entries: Iterable[IndexEntry] = (), *, ascending: bool = False
    ) -> None:
        self.ascending = ascending
        self._keys = SortedList()
        self._by_user: dict[str, int] = {}
        self._users: list[str | None] = []
        self._free: list[int] = []
        # Only entries that carry metadata have a slot here.
        self._metadata: dict[str, bytes] = {}
        for entry in entries:
            self.upsert(*entry)

    @classmethod
    def from_entries(
        cls,
        entries: Iterable[IndexEntry],
        *,
        ascending: bool = False,
        metadata: dict[str, bytes] | None = None,
    ) -> LeaderboardIndex:
        """Build from entries in any order. O(n log n)."""
        users: list[str] = []
        scores: list[int] = []
        reached: list[int] = []
        for user_id, score, reached_us in entries:
            users.append(user_id)
            scores.append(score)
            reached.append(reached_us)
        return cls.from_columns(
            users, scores, reached, ascending=ascending, metadata=metadata
        )

    @classmethod
    def from_columns(
        cls,
        users: Sequence[str],
        scores: Sequence[int],
        reached: Sequence[int],
        *,
        ascending: bool = False,
        metadata: dict[str, bytes] | None = None,
    ) -> LeaderboardIndex:
        """Build from the i-th user's score and ``reached_us``, in any
        order. O(n log n).

        Raises ValueError if a user appears twice, and OverflowError if
        more than TIE_LIMIT entries share one score and time.
        """
        index = cls(ascending=ascending)
        index._metadata = metadata or {}
        keys = _keys.make_keys(scores, reached, ascending)
        prefixes = [_keys.key_prefix(key) for key in keys]
        if len(set(prefixes)) < len(prefixes):
            _number_ties(keys, prefixes, users)
        index._users = list(users)
        index._by_user = dict(zip(users, keys, strict=True))
        if len(index._by_user) != len(users):
            raise ValueError("a user appears twice in one index")
        index._keys.update(keys)
        return index

    def __len__(self) -> int:
        """Number of entries. O(1)."""
        return len(self._by_user)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._by_user

    def user_ids(self) -> list[str]:
        """Every user with an entry, in no particular order. O(n)."""
        return list(self._by_user)

    def get(self, user_id: str) -> IndexEntry | None:
        """The user's entry, or None. O(1)."""
        key = self._by_user.get(user_id)
        if key is None:
            return None
        return self._entry(key)

    def metadata(self, user_id: str) -> bytes:
        """The entry's metadata; empty if it has none. O(1)."""
        return self._metadata.get(user_id, b"")

    def upsert(
        self,
        user_id: str,
        score: int,
        reached_us: int,
        metadata: bytes | None = None,
    ) -> None:
        """Insert or move the user's entry. O(log n + t).

        ``metadata`` replaces the stored metadata unless it is None.
        Raises OverflowError, changing nothing, if TIE_LIMIT entries
        already share this score and time.
        """
        old = self._by_user.get(user_id)
        run = [key for key in self._run(score, reached_us) if key != old]
        if len(run) >= _keys.TIE_LIMIT:
            raise OverflowError(
                f"more than {_keys.TIE_LIMIT} entries share one score and time"
            )

        if old is None:
            handle = self._new_handle(user_id)
        else:
            self._keys.remove(old)
            handle = _keys.key_handle(old)
        if metadata:
            self._metadata[user_id] = metadata
        elif metadata is not None:
            self._metadata.pop(user_id, None)
        if not run:
            key = _keys.make_key(score, reached_us, 0, handle, self.ascending)
            self._keys.add(key)
            self._by_user[user_id] = key
            return

        # Entries that share score and time rank by user id; renumber
        # the tie field of the whole run so key order stays rank order.
        members = sorted(
            [(self._user(k), _keys.key_handle(k)) for k in run] + [(user_id, handle)]
        )
        for key in run:
            self._keys.remove(key)
        for tie, (user, user_handle) in enumerate(members):
            key = _keys.make_key(score, reached_us, tie, user_handle, self.ascending)
            self._keys.add(key)
            self._by_user[user] = key

    def remove(self, user_id: str) -> bool:
        """Drop the user's entry; False if there was none. O(log n)."""
        key = self._by_user.pop(user_id, None)
        if key is None:
            return False
        self._keys.remove(key)
        self._metadata.pop(user_id, None)
        handle = _keys.key_handle(key)
        self._users[handle] = None
        self._free.append(handle)
        return True

    def rank_of(self, user_id: str) -> int | None:
        """Entries strictly ahead of the user, or None. O(log n)."""
        key = self._by_user.get(user_id)
        if key is None:
            return None
        return int(self._keys.bisect_left(key))

    def count_ahead(self, score: int, reached_us: int, user_id: str) -> int:
        """Entries strictly ahead of a position. O(log n + t).

        The position need not be in this index: the coordinator asks
        every shard about one user's entry to sum a global rank.
        """
        floor = _keys.prefix_floor(score, reached_us, self.ascending)
        ahead = int(self._keys.bisect_left(floor))
        target = _keys.key_prefix(floor)
        for key in self._keys.islice(ahead):
            if _keys.key_prefix(key) != target or self._user(key) >= user_id:
                break
            ahead += 1
        return ahead

    def count_better(self, score: int) -> int:
        """Entries with a strictly better score. O(log n)."""
        return int(self._keys.bisect_left(_keys.score_floor(score, self.ascending)))

    def top(self, limit: int) -> list[IndexEntry]:
        """The first ``limit`` entries in rank order. O(log n + limit)."""
        return self.range(0, limit)

    def range(self, start: int, limit: int) -> list[IndexEntry]:
        """Entries at positions [start, start + limit). O(log n + limit)."""
        return [self._entry(k) for k in self._keys.islice(start, start + limit)]

    def at(self, position: int) -> IndexEntry:
        """The entry at a position (0 is the best). O(log n)."""
        return self._entry(self._keys[position])

    def memory_bytes(self) -> int:
        """Bytes the index holds, by ``sys.getsizeof``: the sorted keys,
        the user map, the user ids and metadata. O(n).

        Objects shared between structures (a user id is a dict key and a
        handle's target) count once. The allocator's rounding is not
        counted.
        """
        size = sys.getsizeof
        keys = self._keys
        total = size(keys) + size(keys._lists) + size(keys._maxes)
        total += size(keys._index) + sum(size(leaf) for leaf in keys._lists)
        total += sum(map(size, keys))
        total += size(self._by_user) + sum(map(size, self._by_user))
        total += size(self._users) + size(self._free)
        total += size(self._metadata) + sum(map(size, self._metadata.values()))
        return total

    def __iter__(self) -> Iterator[IndexEntry]:
        """Every entry in rank order."""
        return (self._entry(k) for k in self._keys)

    def _run(self, score: int, reached_us: int) -> list[int]:
        """Keys that share score and time. O(log n + t)."""
        floor = _keys.prefix_floor(score, reached_us, self.ascending)
        start = self._keys.bisect_left(floor)
        target = _keys.key_prefix(floor)
        run = []
        for key in self._keys.islice(start):
            if _keys.key_prefix(key) != target:
                break
            run.append(key)
        return run

    def _new_handle(self, user_id: str) -> int:
        if self._free:
            handle = self._free.pop()
            self._users[handle] = user_id
            return handle
        handle = len(self._users)
        if handle >= _keys.HANDLE_LIMIT:
            raise OverflowError(f"an index holds at most {_keys.HANDLE_LIMIT} users")
        self._users.append(user_id)
        return handle

    def _user(self, key: int) -> str:
        user = self._users[_keys.key_handle(key)]
        assert user is not None
        return user

    def _entry(self, key: int) -> IndexEntry:
        score = _keys.key_score(key, self.ascending)
        return IndexEntry(self._user(key), score, _keys.key_reached(key))

    def _check(self) -> None:
        """Assert every invariant of the index. O(n log n)."""
        self._keys._check()
        assert len(self._keys) == len(self._by_user)
        live = len(self._users) - len(self._free)
        assert live == len(self._by_user)
        assert len(set(self._free)) == len(self._free)
        for handle in self._free:
            assert self._users[handle] is None

        for user, key in self._by_user.items():
            assert self._users[_keys.key_handle(key)] == user

        assert set(self._metadata) <= set(self._by_user)
        assert all(self._metadata.values())

        # Key order must be rank order, including user id within a run.
        order = [
            _keys.sort_key(e.score, e.reached_us, e.user_id, self.ascending)
            for e in map(self._entry, self._keys)
        ]
        assert all(a < b for a, b in zip(order, order[1:], strict=False))


def _number_ties(keys: list[int], prefixes: list[int], users: Sequence[str]) -> None:
    """Set the tie field of keys that share a prefix, in user id order."""
    shared = {prefix for prefix, count in Counter(prefixes).items() if count > 1}
    runs: defaultdict[int, list[int]] = defaultdict(list)
    for i, prefix in enumerate(prefixes):
        if prefix in shared:
            runs[prefix].append(i)
    for run in runs.values():
        if len(run) > _keys.TIE_LIMIT:
            raise OverflowError(
                f"more than {_keys.TIE_LIMIT} entries share one score and time"
            )
        run.sort(key=users.__getitem__)
        for tie, i in enumerate(run):
            keys[i] = _keys.with_tie(keys[i], tie)
