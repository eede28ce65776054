"""The in-memory rank index of one leaderboard on one shard.

Entries live in a ``SortedList`` of int keys (see ``chronoscore._keys``)
whose ascending order is rank order, so position equals the number of
entries ahead. The low bits of a key are a *handle*, a small int that
names the user inside the index. The rest is kept per handle in flat
arrays, with no Python object per user besides the key:

- ``_key_of``: each handle's key, the very int the sorted list holds,
  or None for a free handle;
- ``_blob``: every user id in UTF-8, back to back in one ``bytearray``,
  found through the ``_offsets`` and ``_lengths`` arrays;
- ``_tables``: an open-addressing hash table of handles, probed
  linearly from the hash of the user id's UTF-8 bytes and cut into
  segments, one array each: the low bits of the hash pick the segment
  and the rest the home slot in it, so each segment grows on its own;
- ``_free``: handles of removed users, for new users to take;
- ``_metadata``: handle to metadata, for the entries that carry any.

Per entry with 10-byte ids, counting pymalloc's rounding to 16 bytes:
the key int 48, its sorted list slot 8 (plus under 1 for the list's own
nodes), its ``_key_of`` slot 8, the id 10, its offset 4 and length 1,
and a 4-byte table slot at a load of 0.4 to 0.7, so 6 to 10 bytes. That
is 85 to 90 bytes, and 86 right after a bulk build, which sizes the
table for a load of 0.55. As segments grow at different times, a large
index is mostly near the middle of that range. The 1024 segments of a
large index add about 100 bytes each, under 2 bytes per entry at 64k
entries and a tenth of a byte at a million. An entry with metadata adds
a bytes object of 33 bytes plus its length, rounded up to 16, a dict
slot, and its handle as a 32-byte int.

Limits, as contracts:

- A segment grows once more than 70% of its slots are taken, by
  rehashing only its own users: O(n / 1024), about half a millisecond
  per million users in the index. Segments grow at different times.
- An index is one segment until it holds 65,536 users, and is then
  split into 1024 segments once, by rehashing every user: about 30 ms.
  It never goes back to one segment; a bulk build of that many users
  or more builds the segments directly.
- A removal moves later handles of its probe run back into the gap,
  so there are no tombstones, and churn never forces a rehash.
- A removed user's bytes stay in the blob, and a new user given that
  handle reuses them if its id fits. The blob is rewritten without
  them once they outweigh both the live ids and the number of handles.
- Nothing shrinks: the handle arrays and the table's segments stay
  sized for the most users the index has held at once.

The index holds no durable state: the shard rebuilds it from PostgreSQL
at start, and changes it only after PostgreSQL has committed them.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, compress
from typing import NamedTuple

from sortedcontainers import SortedList

from chronoscore import _keys

__all__ = ["IndexEntry", "LeaderboardIndex"]

# Tables and free lists are arrays of C unsigned int, 32 bits wherever
# CPython runs. A table slot that holds no handle holds the type's
# largest value, which is therefore never given out as a handle.
_TABLE_TYPE = "I"
_EMPTY = (1 << 8 * array(_TABLE_TYPE).itemsize) - 1
_MIN_TABLE = 8
_TOO_MANY_USERS = f"an index holds at most {_EMPTY} users"
# A key's low bits, its handle, as ``_keys.key_handle`` takes them, for
# the loops that would otherwise call it once per entry.
_HANDLE_MASK = _keys.HANDLE_LIMIT - 1

# A module global rather than ``hash`` itself so that tests can force
# collisions. Python salts hashes per process, which is fine: an index
# never leaves the process that built it.
_hash = hash

# pymalloc serves objects of at most this many bytes, rounded up to a
# multiple of 16; larger blocks come from malloc at about their size.
_SMALL_OBJECT = 512
_ALIGNMENT = 16

# Metadata by user id, as str or as UTF-8 bytes.
_Metadata = dict[str, bytes] | dict[bytes, bytes]


class IndexEntry(NamedTuple):
    user_id: str
    score: int
    reached_us: int


class LeaderboardIndex:
    """Rank-ordered entries of one leaderboard held by one shard.

    Costs below are for n entries and t, the number of entries that
    share both score and ``reached_us`` with the one in question. A shard
    stamps distinct times on the updates it applies, so t is 0 or 1
    unless entries were copied in from another shard. Finding a user is
    O(1) expected; "O(1)" below means that.

    User ids must be encodable as UTF-8 (no lone surrogates), as every
    id that arrives by gRPC or from PostgreSQL is. An index holds at
    most ``_keys.HANDLE_LIMIT - 1`` users.
    """

    # A segment of the table is rebuilt once more than _MAX_LOAD of its
    # slots hold a handle, to a size where _GROWN_LOAD do; a bulk build
    # sizes segments for _BUILT_LOAD, as a freshly loaded shard rarely
    # grows by much.
    _MAX_LOAD = 0.7
    _GROWN_LOAD = 0.4
    _BUILT_LOAD = 0.55
    # The table is one segment until the index holds _SPLIT_AT users,
    # which a full rebuild handles in about 30 ms; it is then split into
    # _SEGMENTS, a power of two, for good. Tests lower both.
    _SPLIT_AT = 65_536
    _SEGMENTS = 1024

    def __init__(
        self, entries: Iterable[IndexEntry] = (), *, ascending: bool = False
    ) -> None:
        self.ascending = ascending
        self._keys = SortedList()
        self._key_of: list[int | None] = []
        self._free = array(_TABLE_TYPE)
        self._blob = bytearray()
        self._offsets = array("B")
        self._lengths = array("B")
        # Bytes of the blob that belong to no live user.
        self._garbage = 0
        # A user's segment is the low _bits of its hash, and the rest
        # of the hash picks its home slot there.
        self._bits = 0
        self._mask = 0
        self._tables = [array(_TABLE_TYPE, [_EMPTY]) * _MIN_TABLE]
        self._counts = array(_TABLE_TYPE, [0])
        # Only entries that carry metadata have a slot here.
        self._metadata: dict[int, bytes] = {}
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
        users: Sequence[str] | Sequence[bytes],
        scores: Sequence[int],
        reached: Sequence[int],
        *,
        ascending: bool = False,
        metadata: _Metadata | None = None,
    ) -> LeaderboardIndex:
        """Build from the i-th user's score and ``reached_us``, in any
        order. O(n log n).

        Users are all str, or all bytes holding their UTF-8 form (which
        spares encoding them). ``metadata`` is keyed the same way, and
        its empty values are dropped.

        Raises ValueError if a user appears twice or metadata names a
        user with no entry, and OverflowError if more than TIE_LIMIT
        entries share one score and time.
        """
        index = cls(ascending=ascending)
        names = _utf8(users)
        keys = _keys.make_keys(scores, reached, ascending)
        if len(names) != len(keys):
            raise ValueError("users and scores differ in length")
        if len(keys) > _EMPTY:
            raise OverflowError(_TOO_MANY_USERS)

        prefixes = _keys.key_prefixes(keys)
        if len(set(prefixes)) < len(prefixes):
            _number_ties(keys, prefixes, names)
        index._keys.update(keys)
        # A copy of exactly n slots, where the list built by appending
        # has up to an eighth more.
        index._key_of = list(keys)
        index._load_users(names)
        if metadata:
            index._load_metadata(names, metadata)
        return index

    def __len__(self) -> int:
        """Number of entries. O(1)."""
        return len(self._keys)

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str):
            return False
        return self._handle(user_id) != _EMPTY

    def user_ids(self) -> list[str]:
        """Every user with an entry, in no particular order. O(n)."""
        blob = bytes(self._blob)
        return [
            blob[start : start + length].decode()
            for key, start, length in zip(
                self._key_of, self._offsets, self._lengths, strict=True
            )
            if key is not None
        ]

    def get(self, user_id: str) -> IndexEntry | None:
        """The user's entry, or None. O(1)."""
        handle = self._handle(user_id)
        if handle == _EMPTY:
            return None
        key = self._key_of[handle]
        assert key is not None
        score = _keys.key_score(key, self.ascending)
        return IndexEntry(user_id, score, _keys.key_reached(key))

    def metadata(self, user_id: str) -> bytes:
        """The entry's metadata; empty if it has none. O(1)."""
        return self._metadata.get(self._handle(user_id), b"")

    def upsert(
        self,
        user_id: str,
        score: int,
        reached_us: int,
        metadata: bytes | None = None,
    ) -> None:
        """Insert or move the user's entry. O(log n + t), plus O(n / S)
        when a new user makes one of the S segments of the table grow,
        and O(n) once, when the table is split.

        ``metadata`` replaces the stored metadata unless it is None.
        Raises OverflowError, changing nothing, if TIE_LIMIT entries
        already share this score and time.
        """
        name = user_id.encode()
        segment, slot = self._slot(name)
        handle = self._tables[segment][slot]
        old = None if handle == _EMPTY else self._key_of[handle]
        run = [key for key in self._run(score, reached_us) if key != old]
        if len(run) >= _keys.TIE_LIMIT:
            raise OverflowError(
                f"more than {_keys.TIE_LIMIT} entries share one score and time"
            )

        if old is None:
            handle = self._add_user(segment, slot, name)
        else:
            self._keys.remove(old)
        if metadata:
            self._metadata[handle] = metadata
        elif metadata is not None:
            self._metadata.pop(handle, None)
        if not run:
            key = _keys.make_key(score, reached_us, 0, handle, self.ascending)
            self._keys.add(key)
            self._key_of[handle] = key
            return

        # Entries that share score and time rank by user id; renumber
        # the tie field of the whole run so key order stays rank order.
        # UTF-8 byte order is code point order, so the ids need no
        # decoding to be sorted.
        members: list[tuple[bytes | bytearray, int]] = [
            (self._name(_keys.key_handle(k)), _keys.key_handle(k)) for k in run
        ]
        members.append((name, handle))
        members.sort()
        for key in run:
            self._keys.remove(key)
        for tie, (_, member) in enumerate(members):
            key = _keys.make_key(score, reached_us, tie, member, self.ascending)
            self._keys.add(key)
            self._key_of[member] = key

    def remove(self, user_id: str) -> bool:
        """Drop the user's entry; False if there was none. O(log n),
        plus now and then an O(n) rewrite of the blob, amortized O(1)
        per byte of removed ids.
        """
        segment, slot = self._slot(user_id.encode())
        handle = self._tables[segment][slot]
        if handle == _EMPTY:
            return False
        key = self._key_of[handle]
        self._keys.remove(key)
        self._metadata.pop(handle, None)

        # The handle keeps its place in the blob, for a new user whose
        # id fits there to take over.
        self._key_of[handle] = None
        self._free.append(handle)
        self._garbage += self._lengths[handle]
        self._unlink(segment, slot)
        self._counts[segment] -= 1
        if self._garbage > self._garbage_limit():
            self._compact()
        return True

    def rank_of(self, user_id: str) -> int | None:
        """Entries strictly ahead of the user, or None. O(log n)."""
        handle = self._handle(user_id)
        if handle == _EMPTY:
            return None
        return int(self._keys.bisect_left(self._key_of[handle]))

    def count_ahead(self, score: int, reached_us: int, user_id: str) -> int:
        """Entries strictly ahead of a position. O(log n + t).

        The position need not be in this index: the coordinator asks
        every shard about one user's entry to sum a global rank.
        """
        floor = _keys.prefix_floor(score, reached_us, self.ascending)
        ahead = int(self._keys.bisect_left(floor))
        target = _keys.key_prefix(floor)
        name = user_id.encode()
        for key in self._keys.islice(ahead):
            if _keys.key_prefix(key) != target:
                break
            if self._name(_keys.key_handle(key)) >= name:
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
        return self._entries(self._keys.islice(start, start + limit))

    def at(self, position: int) -> IndexEntry:
        """The entry at a position (0 is the best). O(log n)."""
        return self._entry(self._keys[position])

    def memory_bytes(self) -> int:
        """Bytes the index holds: the sorted keys, the per-handle key
        list, the user ids and their offsets, lengths and hash table,
        the free handles and the metadata. O(n).

        Sizes are ``sys.getsizeof`` rounded up the way pymalloc rounds
        small objects. A key is held by both the sorted list and the key
        list and counts once.
        """
        size = sys.getsizeof
        keys = self._keys
        parts = [self, self.__dict__, keys, keys._maxes, keys._index]
        parts += [keys._lists, *keys._lists, self._key_of, self._free]
        parts += [self._blob, self._offsets, self._lengths, self._counts]
        parts += [self._tables, *self._tables]
        parts += [self._metadata, *self._metadata]
        # Equal short values may be one object, as CPython shares every
        # one-byte bytes object.
        parts += list({id(v): v for v in self._metadata.values()}.values())
        total = sum(_allocated(size(part)) for part in parts)

        # The keys, by size, as most of them have the same one.
        sizes = Counter(map(size, keys))
        return total + sum(_allocated(each) * n for each, n in sizes.items())

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

    # User ids and handles

    def _name(self, handle: int) -> bytearray:
        """The handle's user id in UTF-8. O(1)."""
        start = self._offsets[handle]
        return self._blob[start : start + self._lengths[handle]]

    def _entry(self, key: int) -> IndexEntry:
        user = self._name(_keys.key_handle(key)).decode()
        score = _keys.key_score(key, self.ascending)
        return IndexEntry(user, score, _keys.key_reached(key))

    def _entries(self, keys: Iterable[int]) -> list[IndexEntry]:
        """The entries of ``keys``, as many :meth:`_entry` calls would
        give them but with the lookups hoisted out of the loop. O(k).
        """
        blob, offsets, lengths = self._blob, self._offsets, self._lengths
        ascending = self.ascending
        entries = []
        for key in keys:
            handle = key & _HANDLE_MASK
            start = offsets[handle]
            user = blob[start : start + lengths[handle]].decode()
            score = _keys.key_score(key, ascending)
            entries.append(IndexEntry(user, score, _keys.key_reached(key)))
        return entries

    def _handle(self, user_id: str) -> int:
        """The user's handle, or _EMPTY if the user has no entry. O(1).

        The probe of :meth:`_slot`, repeated here to spare the read
        paths a call.
        """
        name = user_id.encode()
        code = _hash(name)
        table = self._tables[code & self._mask]
        size = len(table)
        slot = (code >> self._bits) % size
        while (handle := table[slot]) != _EMPTY:
            if self._blob.startswith(name, self._offsets[handle]):
                if self._lengths[handle] == len(name):
                    return handle
            slot = (slot + 1) % size
        return _EMPTY

    def _slot(self, name: bytes) -> tuple[int, int]:
        """The segment of the user whose UTF-8 id is ``name``, and the
        slot in it that holds the user, or else the empty slot where
        that user would go. O(1).
        """
        code = _hash(name)
        segment = code & self._mask
        table = self._tables[segment]
        size = len(table)
        slot = (code >> self._bits) % size
        while (handle := table[slot]) != _EMPTY:
            # A stored id that only starts with ``name`` is another user.
            if self._blob.startswith(name, self._offsets[handle]):
                if self._lengths[handle] == len(name):
                    return segment, slot
            slot = (slot + 1) % size
        return segment, slot

    def _add_user(self, segment: int, slot: int, name: bytes) -> int:
        """Give the user a handle, their id a place in the blob, and the
        handle the empty slot ``slot`` of ``segment``. O(1), or O(n / S)
        when the segment grows.
        """
        if self._maybe_grow(segment):
            segment, slot = self._slot(name)

        if self._free:
            handle = self._free.pop()
        else:
            handle = len(self._key_of)
            if handle >= _EMPTY:
                raise OverflowError(_TOO_MANY_USERS)
            self._key_of.append(None)
            self._offsets.append(0)
            self._lengths.append(0)
        self._place(handle, name)
        self._tables[segment][slot] = handle
        self._counts[segment] += 1
        return handle

    def _maybe_grow(self, segment: int) -> bool:
        """Make room in ``segment`` for one more user, if it needs it,
        or split the table once the index is big enough; False if
        nothing changed. O(1), or O(n / S) to grow, or O(n) to split.
        """
        if not self._bits and len(self._keys) >= self._SPLIT_AT:
            self._split()
            return True
        count = self._counts[segment]
        if count < int(len(self._tables[segment]) * self._MAX_LOAD):
            return False
        self._rehash(segment, math.ceil((count + 1) / self._GROWN_LOAD))
        return True

    def _place(self, handle: int, name: bytes) -> None:
        """Write the handle's new user id into the blob. O(1)."""
        length = len(name)
        if length <= self._lengths[handle]:
            # Reuse the bytes the handle's last user left behind.
            start = self._offsets[handle]
            self._blob[start : start + length] = name
            self._garbage -= length
        else:
            start = len(self._blob)
            self._blob += name
        try:
            self._offsets[handle] = start
            self._lengths[handle] = length
        except OverflowError:
            # The blob or this id outgrew its column's type.
            self._offsets = _stored(self._offsets, handle, start)
            self._lengths = _stored(self._lengths, handle, length)

    def _unlink(self, segment: int, hole: int) -> None:
        """Empty a slot of a segment, moving back each later handle of
        its probe run that may fill the gap, so every handle stays
        reachable from its home slot without tombstones. O(1).
        """
        table = self._tables[segment]
        size = len(table)
        slot = (hole + 1) % size
        blob, offsets, lengths = self._blob, self._offsets, self._lengths
        bits = self._bits
        while (handle := table[slot]) != _EMPTY:
            start = offsets[handle]
            code = _hash(bytes(blob[start : start + lengths[handle]]))
            home = (code >> bits) % size
            # The handle may move to the hole if the hole lies on its
            # probe path, from its home up to where it is now.
            if (slot - home) % size >= (slot - hole) % size:
                table[hole] = handle
                hole = slot
            slot = (slot + 1) % size
        table[hole] = _EMPTY

    def _rehash(self, segment: int, size: int) -> None:
        """Rebuild one segment with ``size`` slots. O(n / S)."""
        blob, offsets, lengths = self._blob, self._offsets, self._lengths
        bits = self._bits
        handles = [h for h in self._tables[segment] if h != _EMPTY]
        codes = [
            _hash(bytes(blob[offsets[h] : offsets[h] + lengths[h]])) for h in handles
        ]
        homes = [(code >> bits) % size for code in codes]
        self._tables[segment] = _table_of(zip(handles, homes, strict=True), size)

    def _split(self) -> None:
        """Spread the users of the one segment over _SEGMENTS. O(n)."""
        blob = bytes(self._blob)
        spans = zip(self._offsets, self._lengths, strict=True)
        codes = [_hash(blob[at : at + length]) for at, length in spans]
        if self._free:
            keys = zip(self._key_of, codes, strict=True)
            live = [(h, c) for h, (key, c) in enumerate(keys) if key is not None]
            handles: Sequence[int] = [h for h, _ in live]
            codes = [c for _, c in live]
        else:
            handles = range(len(codes))
        self._fill(handles, codes, self._SEGMENTS, self._GROWN_LOAD)

    def _fill(
        self, handles: Sequence[int], codes: list[int], segments: int, load: float
    ) -> None:
        """Make the table ``segments`` segments, sized for ``load``, that
        hold the i-th handle, whose id hashes to the i-th code. O(n).
        """
        self._bits = segments.bit_length() - 1
        self._mask = segments - 1
        if not self._fill_evenly(handles, codes, segments, load):
            self._fill_exactly(handles, codes, segments, load)

    def _fill_evenly(
        self, handles: Sequence[int], codes: list[int], segments: int, load: float
    ) -> bool:
        """:meth:`_fill` with segments of one size; False, with nothing
        set, if one of them would be too full. O(n).

        The segments start interleaved in one array, where slot k of
        segment s is at k * segments + s: there a code modulo the
        array's length is the user's home, and probing by steps of
        ``segments`` stays in the segment, so one pass over the users
        costs about what filling one table does.
        """
        size = max(_MIN_TABLE, math.ceil(len(codes) / segments / load))
        whole = _interleaved(handles, codes, segments, size)
        if whole is None:
            return False
        tables = [whole[segment::segments] for segment in range(segments)]
        counts = array(_TABLE_TYPE, [size - t.count(_EMPTY) for t in tables])
        self._tables, self._counts = tables, counts

        # One size fits the average segment; grow the few it does not.
        for segment, count in enumerate(counts):
            if count > int(size * self._MAX_LOAD):
                self._rehash(segment, math.ceil(count / load))
        return True

    def _fill_exactly(
        self, handles: Sequence[int], codes: list[int], segments: int, load: float
    ) -> None:
        """:meth:`_fill` with each segment sized for its own users. O(n)."""
        bits, mask = self._bits, self._mask
        where = [code & mask for code in codes]
        counts = array(_TABLE_TYPE, [0]) * segments
        for segment, count in Counter(where).items():
            counts[segment] = count
        sizes = [max(_MIN_TABLE, math.ceil(n / load)) for n in counts]
        homes = [
            (code >> bits) % sizes[s] for code, s in zip(codes, where, strict=True)
        ]
        tables = [array(_TABLE_TYPE, [_EMPTY]) * size for size in sizes]
        _place_all(tables, handles, where, homes)
        self._tables, self._counts = tables, counts

    def _garbage_limit(self) -> int:
        """The most bytes of removed users the blob may keep: as many as
        the live users' ids take, or one per handle, whichever is more.
        A rewrite visits every handle and live byte, so it comes only
        after at least as many bytes were removed: O(1) per byte.
        """
        return max(len(self._blob) - self._garbage, len(self._key_of))

    def _compact(self) -> None:
        """Rewrite the blob with the ids of live users only. O(n)."""
        blob = bytes(self._blob)
        names = [
            b"" if key is None else blob[start : start + length]
            for key, start, length in zip(
                self._key_of, self._offsets, self._lengths, strict=True
            )
        ]
        self._store_names(names)

    def _store_names(self, names: list[bytes]) -> None:
        """Make the blob hold ``names[h]`` for each handle h. O(n)."""
        lengths = list(map(len, names))
        starts = list(accumulate(lengths, initial=0))
        self._blob = bytearray().join(names)
        self._garbage = 0
        self._offsets = array(_typecode(starts.pop()), starts)
        self._lengths = array(_typecode(max(lengths, default=0)), lengths)

    def _load_users(self, names: list[bytes]) -> None:
        """Give the i-th user handle i, for a new index. O(n).

        Raises ValueError if a user appears twice.
        """
        self._store_names(names)
        segments = self._SEGMENTS if len(names) >= self._SPLIT_AT else 1
        codes = list(map(_hash, names))
        self._fill(range(len(names)), codes, segments, self._BUILT_LOAD)
        if len(set(names)) < len(names):
            raise ValueError("a user appears twice in one index")

    def _load_metadata(self, names: list[bytes], metadata: _Metadata) -> None:
        """Attach metadata to the i-th user of ``names``, handle i, for
        a new index. O(n), in one pass over ``names`` that runs in C:
        when many entries carry metadata, as after a load, that is
        cheaper than a probe of the table for each.
        """
        wanted = {
            user.encode() if isinstance(user, str) else user: value
            for user, value in metadata.items()
        }
        values = list(map(wanted.get, names))
        if len(values) - values.count(None) < len(wanted):
            raise ValueError("metadata names a user with no entry")

        # Empty metadata is no metadata: both of these skip it.
        handles = compress(range(len(values)), values)
        self._metadata = dict(zip(handles, filter(None, values), strict=True))

    def _check(self) -> None:
        """Assert every invariant of the index. O(n log n)."""
        self._keys._check()
        key_of = self._key_of
        held = {h: key for h, key in enumerate(key_of) if key is not None}
        assert len(held) == len(self._keys) == len(key_of) - len(self._free)
        assert sorted(held.values()) == list(self._keys)
        assert all(_keys.key_handle(key) == h for h, key in held.items())
        assert len(set(self._free)) == len(self._free)
        assert all(key_of[handle] is None for handle in self._free)
        live = list(held)

        self._check_blob(live)
        self._check_table(live)

        assert set(self._metadata) <= set(live)
        assert all(self._metadata.values())

        # Key order must be rank order, including user id within a run.
        order = [
            _keys.sort_key(e.score, e.reached_us, e.user_id, self.ascending)
            for e in map(self._entry, self._keys)
        ]
        assert all(a < b for a, b in zip(order, order[1:], strict=False))

    def _check_blob(self, live: list[int]) -> None:
        """Every handle's id lies in the blob, apart from every other's."""
        offsets, lengths = self._offsets, self._lengths
        assert len(offsets) == len(lengths) == len(self._key_of)
        end = 0
        for start, length in sorted(zip(offsets, lengths, strict=True)):
            if length:
                assert start >= end
                end = start + length
        assert end <= len(self._blob)

        used = sum(lengths[handle] for handle in live)
        assert self._garbage == len(self._blob) - used
        assert self._garbage <= self._garbage_limit()
        for handle in live:
            self._name(handle).decode()

    def _check_table(self, live: list[int]) -> None:
        """The segments hold each live handle once, each in the segment
        of its user's hash, which finds the user.
        """
        tables, counts = self._tables, self._counts
        assert self._bits in (0, self._SEGMENTS.bit_length() - 1)
        assert len(tables) == len(counts) == 1 << self._bits == self._mask + 1
        assert self._bits or len(live) <= self._SPLIT_AT
        for table, count in zip(tables, counts, strict=True):
            assert len(table) >= _MIN_TABLE
            assert count == len(table) - table.count(_EMPTY)
            assert count <= int(len(table) * self._MAX_LOAD) < len(table)
        held = [h for table in tables for h in table if h != _EMPTY]
        assert sorted(held) == live
        for handle in live:
            name = bytes(self._name(handle))
            segment, slot = self._slot(name)
            assert segment == _hash(name) & self._mask
            assert tables[segment][slot] == handle


def _utf8(users: Sequence[str] | Sequence[bytes]) -> list[bytes]:
    """Users' ids in UTF-8, as given if they are bytes already. O(n)."""
    if users and isinstance(users[0], str):
        return list(map(str.encode, users))  # type: ignore[arg-type]
    return list(users)  # type: ignore[arg-type]


def _table_of(placed: Iterable[tuple[int, int]], size: int) -> array[int]:
    """A hash table of ``size`` slots holding each (handle, home slot)
    of ``placed``, probed linearly from the home slot. O(n) expected.
    """
    empty = _EMPTY
    table = array(_TABLE_TYPE, [empty]) * size
    for handle, slot in placed:
        while table[slot] != empty:
            slot += 1
            if slot == size:
                slot = 0
        table[slot] = handle
    return table


def _interleaved(
    handles: Iterable[int], codes: list[int], segments: int, size: int
) -> array[int] | None:
    """A table of ``segments`` interleaved segments of ``size`` slots
    holding each handle of ``handles`` (see ``_fill_evenly``), or None
    if a segment is too small for its handles. O(n) expected.
    """
    empty = _EMPTY
    total = segments * size
    table = array(_TABLE_TYPE, [empty]) * total
    # A handle wraps round its segment at most once unless the segment
    # is full, so more wraps than handles means one is.
    wraps, most = 0, len(codes)
    for handle, code in zip(handles, codes, strict=True):
        slot = code % total
        while table[slot] != empty:
            slot += segments
            if slot >= total:
                slot -= total
                wraps += 1
                if wraps > most:
                    return None
        table[slot] = handle
    return table


def _place_all(
    tables: list[array[int]],
    handles: Iterable[int],
    where: Iterable[int],
    homes: Iterable[int],
) -> None:
    """Put each handle of ``handles`` into its segment of ``where``,
    probing linearly from its home slot of ``homes``. O(n) expected.
    """
    empty = _EMPTY
    for handle, segment, slot in zip(handles, where, homes, strict=True):
        table = tables[segment]
        while table[slot] != empty:
            slot += 1
            if slot == len(table):
                slot = 0
        table[slot] = handle


def _typecode(largest: int) -> str:
    """The narrowest unsigned array type that holds ``largest``."""
    for code in "BHIQ":
        if largest < 1 << 8 * array(code).itemsize:
            return code
    raise OverflowError(f"{largest} does not fit in an array")


def _stored(column: array[int], index: int, value: int) -> array[int]:
    """``column`` with ``value`` at ``index``: ``column`` itself, or a
    wider copy of it if ``value`` does not fit its type.
    """
    try:
        column[index] = value
    except OverflowError:
        column = array(_typecode(value), column)
        column[index] = value
    return column


def _allocated(size: int) -> int:
    """The bytes the allocator hands out for a request of ``size``."""
    if size > _SMALL_OBJECT:
        return size
    return -(-size // _ALIGNMENT) * _ALIGNMENT


def _number_ties(
    keys: list[int],
    prefixes: list[int],
    users: Sequence[bytes],
) -> None:
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
