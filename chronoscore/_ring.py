"""The ring: which shard each user belongs to.

A user hashes to one of ``SLOT_COUNT`` slots (CRC-32 of the UTF-8 user
id), and each slot maps to a shard through a ketama consistent-hash ring
(uhashring) built from the shard names. Both steps depend only on the
bytes of the user id and the set of shard names: not on
``PYTHONHASHSEED``, not on the process, and not on the order the names
were given in. Adding or removing one of N shards changes the owner of
about 1/N of the slots, and a slot's users always move together.

Which shard owns a slot right now is recorded in PostgreSQL
(``chronoscore._placement``); it is this ring's choice except while a
rebalance moves slots.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable

from uhashring import HashRing

from .errors import InvalidArgument

__all__ = [
    "SLOT_COUNT",
    "SHARD_HEADER",
    "SLOTS_HEADER",
    "GENERATION_TRAILER",
    "Ring",
    "slot_of",
    "check_shard_name",
]

# gRPC metadata key with which a coordinator names the shard it means to
# call, which catches two names configured with one address...
SHARD_HEADER = "x-chronoscore-shard"
# ... and, on reads, the digest of the slots it believes that shard owns;
# a shard that owns others refuses the read (see chronoscore._placement).
SLOTS_HEADER = "x-chronoscore-slots"
# Trailing metadata of a shard's write replies: the shard's write
# generation once the write is visible (see ShardService.FollowTop).
GENERATION_TRAILER = "x-chronoscore-generation"

SLOT_COUNT = 16384

_SHARD_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")


def slot_of(user_id: str) -> int:
    """The slot a user id hashes to. O(len(user_id))."""
    return zlib.crc32(user_id.encode()) % SLOT_COUNT


def check_shard_name(name: str) -> str:
    """Return ``name`` if it is a valid shard name, else raise."""
    if not _SHARD_NAME.fullmatch(name):
        raise InvalidArgument(
            f"shard name {name!r} must be 1-63 lowercase letters, digits,"
            " '.' or '-', starting with a letter or digit"
        )
    return name


class Ring:
    """An immutable map from slots to shard names."""

    def __init__(self, shards: Iterable[str]) -> None:
        names = sorted({check_shard_name(s) for s in shards})
        if not names:
            raise InvalidArgument("a ring needs at least one shard")
        self.shards: tuple[str, ...] = tuple(names)

        # Points that collide on the ring go to the node added last, so
        # the names are added in sorted order to keep the ring the same
        # whatever order they were listed in.
        ring = HashRing(nodes=names, hash_fn="ketama")
        self._owners: tuple[str, ...] = tuple(
            ring.get_node(f"slot-{slot}") for slot in range(SLOT_COUNT)
        )

    @property
    def fingerprint(self) -> str:
        """A short digest of the shard names; equal rings, equal digests."""
        digest = hashlib.sha256(",".join(self.shards).encode()).hexdigest()
        return digest[:16]

    def owner(self, user_id: str) -> str:
        """The shard that owns a user. O(len(user_id))."""
        return self._owners[slot_of(user_id)]

    def owner_of_slot(self, slot: int) -> str:
        return self._owners[slot]

    def slots_of(self, shard: str) -> list[int]:
        """Every slot the shard owns, ascending. O(SLOT_COUNT)."""
        return [s for s, owner in enumerate(self._owners) if owner == shard]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and other.shards == self.shards

    def __hash__(self) -> int:
        return hash(self.shards)

    def __repr__(self) -> str:
        return f"Ring({list(self.shards)!r})"
