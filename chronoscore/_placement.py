"""Placement: which shard owns each slot, kept in PostgreSQL.

Users hash to slots (``chronoscore._ring``); each slot's owner is a row
of ``ring_slots``. ``ring_state`` holds the members, the shard names the
ring is meant to be built from, and a version that every change bumps.
Each slot also records ``moved_at``, the version at which it last moved.
``ring_shards`` holds, per shard, an epoch bumped whenever its set of
slots changes, the epoch it has applied, and the address it listens on.

A rebalance (``chronoscore cluster add-shard``) moves slots whose owner
differs from the members' ring, a chunk at a time, each chunk in one
transaction that changes the owners, bumps both shards' epochs and the
version, and notifies every process. A shard commits writes in a
transaction that first takes its ``ring_shards`` row FOR SHARE and
checks the epoch it holds, so:

- once a chunk's move commits, the old owner cannot commit to those
  slots again: its next commit sees the new epoch, drops them, and
  fails their writes back to the coordinator, which re-routes them;
- the new owner loads the chunk from PostgreSQL, where it is complete,
  before it commits anything to it.

No acknowledged write is lost or applied twice, whichever process dies
at whatever step; a rebalance that stops can simply be run again.

A shard compares slots with their ``moved_at``, not just their numbers:
a slot that left and came back while the shard was not looking (paused,
say) moved twice, so the shard loads it again rather than trusting what
it held before.

Reads stay exact during a move because every read a coordinator sends
names the digest of the slots (with their ``moved_at``) it believes that
shard holds; a shard that holds others refuses the call (ABORTED), and
the coordinator reloads the placement and reads again. Within one
answer, every slot is therefore counted on exactly one shard.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

from ._db import is_unavailable
from ._ring import SLOT_COUNT, Ring, slot_of
from .errors import ChronoscoreError, FailedPrecondition

__all__ = [
    "CHANNEL",
    "lease_key",
    "exclusive_rebalance",
    "Placement",
    "ShardState",
    "holding_digest",
    "bootstrap",
    "load",
    "version",
    "register",
    "heartbeat",
    "addresses",
    "layout",
    "shard_states",
    "set_members",
    "move",
    "watch",
]

logger = logging.getLogger("chronoscore.placement")

# NOTIFY channel on which a placement change wakes every process.
CHANNEL = "chronoscore_ring"

# Serialises bootstraps and moves, one transaction at a time.
_LOCK = 0x43_68_72_6F_52_67
# Held by a rebalance for as long as it runs, so two never interleave.
_REBALANCE_LOCK = 0x43_68_72_6F_4D_76


def lease_key(name: str) -> int:
    """The advisory lock key a running shard holds; a shard runs exactly
    while its key is locked. 64 bits of a hash of the name, so two names
    share a key with odds of about one in 2**64."""
    digest = hashlib.sha256(b"chronoscore shard lease\0" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def holding_digest(held: Mapping[int, int]) -> str:
    """A short digest of slots and their ``moved_at``; what reads check."""
    data = array("q", [x for slot in sorted(held) for x in (slot, held[slot])])
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


class Placement:
    """One version of the slot → shard map. Immutable."""

    def __init__(
        self,
        version: int,
        members: Iterable[str],
        owners: Sequence[str],
        moved_at: Sequence[int],
    ) -> None:
        if not len(owners) == len(moved_at) == SLOT_COUNT:
            raise FailedPrecondition(
                f"the placement holds {len(owners)} slots, not {SLOT_COUNT}"
            )
        self.version = version
        self.members: tuple[str, ...] = tuple(sorted(members))
        self.owners: tuple[str, ...] = tuple(owners)
        held: dict[str, dict[int, int]] = {}
        for slot, owner in enumerate(self.owners):
            held.setdefault(owner, {})[slot] = moved_at[slot]
        self._held = held
        # Shards that own at least one slot: the ones every read asks.
        self.holders: tuple[str, ...] = tuple(sorted(held))
        self.digests = {name: holding_digest(h) for name, h in held.items()}

    @classmethod
    def of_ring(cls, ring: Ring, version: int = 1) -> Placement:
        owners = [ring.owner_of_slot(s) for s in range(SLOT_COUNT)]
        return cls(version, ring.shards, owners, [version] * SLOT_COUNT)

    def owner(self, user_id: str) -> str:
        """The shard that owns a user. O(len(user_id))."""
        return self.owners[slot_of(user_id)]

    def slots_of(self, shard: str) -> list[int]:
        return sorted(self._held.get(shard, ()))

    def digest(self, shard: str) -> str:
        """Digest of the slots ``shard`` owns; what reads check."""
        return self.digests.get(shard) or holding_digest({})

    @property
    def target(self) -> Ring:
        """The ring of the members: where every slot should end up."""
        return _ring_of(self.members)

    def pending(self) -> list[int]:
        """Slots whose owner is not the members' ring's choice."""
        target = self.target
        return [
            slot
            for slot, owner in enumerate(self.owners)
            if owner != target.owner_of_slot(slot)
        ]

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}: {len(s)}" for n, s in sorted(self._held.items()))
        return f"Placement(version={self.version}, {{{counts}}})"


@functools.lru_cache(maxsize=8)
def _ring_of(members: tuple[str, ...]) -> Ring:
    return Ring(members)


@dataclass(frozen=True, slots=True)
class ShardState:
    """One shard's row of ``ring_shards``."""

    name: str
    epoch: int
    applied_epoch: int
    address: str | None
    # Whether a process for this shard is connected and holds its lock.
    running: bool


async def bootstrap(conn: AsyncConnection, names: Iterable[str]) -> bool:
    """Give a new cluster its first placement, the ring of ``names``.

    Does nothing if the database already holds one; that one wins, since
    online changes are recorded there and not in anyone's flags. Returns
    whether it created the placement.
    """
    ring = Ring(names)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        cur = await conn.execute("SELECT members FROM ring_state")
        row = await cur.fetchone()
        if row is not None:
            if tuple(sorted(row[0])) != ring.shards:
                logger.info(
                    "the database's ring members are %s, not the given %s;"
                    " the database's placement holds until `chronoscore cluster`"
                    " changes it",
                    ",".join(sorted(row[0])),
                    ",".join(ring.shards),
                )
            return False
        placement = Placement.of_ring(ring)
        await conn.execute(
            "INSERT INTO ring_state (version, members) VALUES (1, %s)",
            [list(ring.shards)],
        )
        await conn.execute(
            "INSERT INTO ring_slots (slot, owner)"
            " SELECT * FROM unnest(%s::integer[], %s::text[])",
            [list(range(SLOT_COUNT)), list(placement.owners)],
        )
        await conn.execute(
            "INSERT INTO ring_shards (name) SELECT unnest(%s::text[])"
            " ON CONFLICT (name) DO NOTHING",
            [list(ring.shards)],
        )
        await conn.execute(f"NOTIFY {CHANNEL}")
    logger.info("new cluster: ring of %s", ",".join(ring.shards))
    return True


async def load(conn: AsyncConnection) -> Placement:
    """The current placement, read in one snapshot."""
    cur = await conn.execute(
        "SELECT version, members,"
        " (SELECT array_agg(owner ORDER BY slot) FROM ring_slots),"
        " (SELECT array_agg(moved_at ORDER BY slot) FROM ring_slots)"
        " FROM ring_state"
    )
    row = await cur.fetchone()
    if row is None:
        raise FailedPrecondition(
            "the database holds no ring yet: start the shards (with --ring)"
            " or the coordinator (with --shards) first"
        )
    return Placement(int(row[0]), row[1], row[2] or [], row[3] or [])


async def version(conn: AsyncConnection) -> int:
    cur = await conn.execute("SELECT version FROM ring_state")
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def register(conn: AsyncConnection, name: str, address: str | None) -> None:
    """Record that ``name`` runs, and where it listens once it does."""
    await conn.execute(
        "INSERT INTO ring_shards (name, address, seen_at) VALUES (%s, %s, now())"
        " ON CONFLICT (name) DO UPDATE SET"
        " address = coalesce(EXCLUDED.address, ring_shards.address),"
        " seen_at = now()",
        [name, address],
    )
    if address is not None:
        # Coordinators connect to the new address at once.
        await conn.execute(f"NOTIFY {CHANNEL}")


async def addresses(conn: AsyncConnection) -> dict[str, str | None]:
    """Where each shard last said it listens."""
    cur = await conn.execute("SELECT name, address FROM ring_shards")
    return {name: address for name, address in await cur.fetchall()}


async def heartbeat(conn: AsyncConnection, name: str, applied_epoch: int) -> None:
    await conn.execute(
        "UPDATE ring_shards SET seen_at = now(), applied_epoch = %s WHERE name = %s",
        [applied_epoch, name],
    )


async def layout(conn: AsyncConnection, name: str) -> tuple[int, dict[int, int]]:
    """(epoch, {slot: moved_at}) of one shard, read in one snapshot."""
    cur = await conn.execute(
        "SELECT epoch,"
        " (SELECT array_agg(slot ORDER BY slot) FROM ring_slots WHERE owner = %s),"
        " (SELECT array_agg(moved_at ORDER BY slot) FROM ring_slots"
        "  WHERE owner = %s)"
        " FROM ring_shards WHERE name = %s",
        [name, name, name],
    )
    row = await cur.fetchone()
    if row is None:
        raise FailedPrecondition(f"shard {name!r} is not registered")
    return int(row[0]), dict(zip(row[1] or [], row[2] or [], strict=True))


async def shard_states(conn: AsyncConnection) -> dict[str, ShardState]:
    # pg_locks splits a bigint advisory key into two 32-bit halves.
    cur = await conn.execute(
        "SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.database = (SELECT oid FROM pg_database"
        "                   WHERE datname = current_database())"
    )
    held = {_signed64(row[0]) for row in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT name, epoch, applied_epoch, address FROM ring_shards"
    )
    return {
        name: ShardState(name, epoch, applied, address, lease_key(name) in held)
        for name, epoch, applied, address in await cur.fetchall()
    }


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


async def exclusive_rebalance(conn: AsyncConnection) -> None:
    """Take the rebalance lock for this session, or FailedPrecondition."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [_REBALANCE_LOCK])
    row = await cur.fetchone()
    if not (row and row[0]):
        raise FailedPrecondition(
            "another add-shard, remove-shard or rebalance is running on this"
            " database; wait for it, or run rebalance once it has stopped"
        )


async def _limit_waits(conn: AsyncConnection, seconds: float | None) -> None:
    """Fail this transaction's lock waits after ``seconds`` (LockNotAvailable).

    A shard stopped in the middle of a commit keeps its row locked; a
    mover must give up on it rather than hang.
    """
    if seconds is not None:
        await conn.execute(
            # 0 would mean no limit at all.
            "SELECT set_config('lock_timeout', %s, true)",
            [f"{max(1, round(seconds * 1000))}ms"],
        )


async def set_members(
    conn: AsyncConnection, members: Iterable[str], *, lock_timeout: float | None = None
) -> Placement:
    """Make ``members`` the shards the ring is built from; move nothing."""
    ring = Ring(members)
    async with conn.transaction():
        await _limit_waits(conn, lock_timeout)
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        await conn.execute(
            "UPDATE ring_state SET members = %s, version = version + 1",
            [list(ring.shards)],
        )
        await conn.execute(f"NOTIFY {CHANNEL}")
        return await load(conn)


async def move(
    conn: AsyncConnection,
    slots: Sequence[int],
    to: str,
    *,
    lock_timeout: float | None = None,
) -> Placement:
    """Give ``slots`` to shard ``to`` in one transaction; see the module."""
    async with conn.transaction():
        await _limit_waits(conn, lock_timeout)
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        cur = await conn.execute("SELECT members FROM ring_state")
        row = await cur.fetchone()
        if row is None or to not in row[0]:
            raise FailedPrecondition(f"shard {to!r} is not a member")
        cur = await conn.execute(
            "SELECT DISTINCT owner FROM ring_slots WHERE slot = ANY(%s)",
            [list(slots)],
        )
        shards = {row[0] for row in await cur.fetchall()} | {to}
        cur = await conn.execute(
            "UPDATE ring_shards SET epoch = epoch + 1 WHERE name = ANY(%s)",
            [sorted(shards)],
        )
        if cur.rowcount != len(shards):
            raise FailedPrecondition(f"shard {to!r} has never started")
        await conn.execute(
            "UPDATE ring_slots SET owner = %s,"
            " moved_at = (SELECT version + 1 FROM ring_state) WHERE slot = ANY(%s)",
            [to, list(slots)],
        )
        await conn.execute("UPDATE ring_state SET version = version + 1")
        await conn.execute(f"NOTIFY {CHANNEL}")
        return await load(conn)


async def watch(
    dsn: str, changed: Callable[[], Awaitable[None]], *, every: float = 1.0
) -> None:
    """Call ``changed()`` on every placement notification, and every
    ``every`` seconds in case one was missed; never returns.

    ``changed`` decides whether anything changed. Its failures while
    PostgreSQL is unreachable are logged and tried again.
    """
    while True:
        try:
            async with await AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                while True:
                    await changed()
                    async for _ in conn.notifies(timeout=every, stop_after=1):
                        pass
        except (psycopg.Error, ChronoscoreError, OSError) as exc:
            if isinstance(exc, psycopg.Error) and not is_unavailable(exc):
                logger.warning("placement watch failed: %s", exc)
            else:
                logger.debug("placement watch interrupted: %s", exc)
            await asyncio.sleep(every)
