"""Change the shard count online: ``chronoscore cluster add-shard`` and
``remove-shard``.

Adding or removing a member changes the ring the placement should
follow; then slots whose owner differs from the ring's choice move, a
chunk at a time, each chunk in one transaction (see
``chronoscore._placement`` for why that loses and doubles nothing).
Only those slots move: about 1/N of them when a cluster of N grows by
one. After each chunk the mover waits until both shards have taken it,
so a shard that hangs stops the move instead of leaving its slots
unserved. A shard counts as running while its process holds its lock in
PostgreSQL (see ``shard_node.lease``); slots only move to running ones.
One rebalance runs at a time. A mover that dies, or stops, leaves a
placement that is complete at every step; running any of the commands
again resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

from . import _placement
from ._placement import Placement, ShardState
from ._ring import check_shard_name
from .errors import FailedPrecondition, InvalidArgument, Unavailable

__all__ = ["Moved", "rebalance", "status"]

logger = logging.getLogger("chronoscore.rebalance")


@dataclass(frozen=True, slots=True)
class Moved:
    """What a rebalance did."""

    placement: Placement
    slots_moved: int
    steps: int


@asynccontextmanager
async def _cluster_database(dsn: str) -> AsyncIterator[AsyncConnection]:
    """A connection to a database that holds a ChronoScore placement.

    Nothing is created in it: a mistyped DSN must not leave tables in
    someone else's database.
    """
    async with await AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=10
    ) as conn:
        try:
            await _placement.version(conn)
        except psycopg.errors.UndefinedTable:
            raise FailedPrecondition(
                "this database holds no ChronoScore placement; check --dsn, or"
                " start the cluster's shards first"
            ) from None
        yield conn


async def status(dsn: str) -> tuple[Placement, dict[str, ShardState]]:
    async with _cluster_database(dsn) as conn:
        return await _placement.load(conn), await _placement.shard_states(conn)


async def rebalance(
    dsn: str,
    *,
    add: str | None = None,
    remove: str | None = None,
    slots_per_step: int = 256,
    wait: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> Moved:
    """Make ``add`` a member or ``remove`` one, then move slots until the
    placement matches the members' ring. ``progress(done, total)`` is
    called after each chunk."""
    if slots_per_step < 1:
        raise InvalidArgument(
            f"slots per step must be at least 1, not {slots_per_step}"
        )
    for name in (add, remove):
        if name is not None:
            check_shard_name(name)
    async with _cluster_database(dsn) as conn:
        await _placement.exclusive_rebalance(conn)
        placement = await _placement.load(conn)
        members = set(placement.members)
        if add is not None:
            members.add(add)
        if remove is not None:
            # A removal cut off after the members changed resumes: the
            # shard still owns slots that are waiting to move.
            still_owns = remove in placement.owners
            if remove not in members and not still_owns:
                raise FailedPrecondition(
                    f"shard {remove!r} is not a member; members are"
                    f" {', '.join(placement.members)}"
                )
            members.discard(remove)
            if not members:
                raise FailedPrecondition("the last shard cannot be removed")
        if members != set(placement.members):
            if add is not None:
                _check_alive(await _placement.shard_states(conn), [add])
            async with _give_up_on_locks(wait):
                placement = await _placement.set_members(
                    conn, members, lock_timeout=wait
                )
            logger.info("members are now %s", ", ".join(placement.members))

        total = len(placement.pending())
        steps = 0
        while chunk := _next_chunk(placement, slots_per_step):
            to = placement.target.owner_of_slot(chunk[0])
            involved = {placement.owners[s] for s in chunk} | {to}
            _check_alive(await _placement.shard_states(conn), [to])
            async with _give_up_on_locks(wait):
                placement = await _placement.move(conn, chunk, to, lock_timeout=wait)
            steps += 1
            logger.info("moved %d slots to %s", len(chunk), to)
            await _wait_applied(conn, involved, wait)
            if progress is not None:
                progress(total - len(placement.pending()), total)
        return Moved(placement, total, steps)


@asynccontextmanager
async def _give_up_on_locks(wait: float) -> AsyncIterator[None]:
    try:
        yield
    except psycopg.errors.LockNotAvailable:
        raise Unavailable(
            f"a shard has held its placement row for over {wait:.0f}s (stopped"
            " in the middle of a commit?); nothing moved in this step, so run"
            " the command again once every shard is healthy"
        ) from None


def _next_chunk(placement: Placement, size: int) -> list[int]:
    """Up to ``size`` misplaced slots that share their owner and target."""
    target = placement.target
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for slot in placement.pending():
        groups[placement.owners[slot], target.owner_of_slot(slot)].append(slot)
    if not groups:
        return []
    return groups[min(groups)][:size]


def _check_alive(states: dict[str, ShardState], names: Iterable[str]) -> None:
    for name in sorted(names):
        state = states.get(name)
        if state is None or not state.running:
            raise FailedPrecondition(
                f"shard {name} is not running: start it first, then run this again"
            )


async def _wait_applied(conn: AsyncConnection, names: set[str], wait: float) -> None:
    """Until every running shard in ``names`` has taken its new slots.

    A shard that is not running takes them when it starts, so it is
    not waited for.
    """
    deadline = time.monotonic() + wait
    while True:
        states = await _placement.shard_states(conn)
        late = sorted(
            name
            for name in names
            if (state := states.get(name)) is not None
            and state.applied_epoch < state.epoch
            and state.running
        )
        if not late:
            return
        if time.monotonic() > deadline:
            raise Unavailable(
                f"shard {', '.join(late)} has not taken its new slots within"
                f" {wait:.0f}s; the placement is consistent, so run the"
                " command again once it is healthy"
            )
        await asyncio.sleep(0.05)
