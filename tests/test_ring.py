"""Placement depends only on user ids and the set of shard names.

Nothing else may change which shard owns a user: not the order the
names are listed in, not ``PYTHONHASHSEED``, not the process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterable

import pytest
from uhashring import HashRing

from chronoscore._ring import SLOT_COUNT, Ring, check_shard_name, slot_of
from chronoscore.errors import InvalidArgument

SHARDS = ["shard-a", "shard-b", "shard-c"]
USERS = [f"user-{i}" for i in range(300)] + ["é", "日本", "\U0001f600", "a b"]

# These two names put a point on the same ring position. uhashring gives
# the slots behind a shared point to the name it was handed last, which
# for these two is 59 slots, so only the Ring's own sorting of the names
# keeps their owners fixed.
COLLIDING = ["shard-829", "shard-836"]

# Ring(set(...)) hands the names over in an order that follows the hash
# seed, so this also covers name order across processes.
_OWNERS_PROGRAM = """
import json, sys
from chronoscore._ring import SLOT_COUNT, Ring
shards, users = json.load(sys.stdin)
ring = Ring(set(shards))
print(json.dumps({
    "hash": hash(shards[0]),
    "owners": [ring.owner(user) for user in users],
    "slots": [ring.owner_of_slot(slot) for slot in range(SLOT_COUNT)],
}))
"""


def owners(ring: Ring) -> list[str]:
    return [ring.owner_of_slot(slot) for slot in range(SLOT_COUNT)]


def owners_in_subprocess(hash_seed: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _OWNERS_PROGRAM],
        input=json.dumps([[*SHARDS, *COLLIDING], USERS]),
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_slot_is_crc32_of_the_utf8_user_id() -> None:
    # 0xCBF43926 is the published CRC-32 of b"123456789".
    assert slot_of("123456789") == 0xCBF43926 % SLOT_COUNT
    assert slot_of("é") == zlib.crc32(b"\xc3\xa9") % SLOT_COUNT

    ring = Ring(SHARDS)
    for user in USERS:
        assert 0 <= slot_of(user) < SLOT_COUNT
        assert ring.owner(user) == ring.owner_of_slot(slot_of(user))


def test_owner_is_independent_of_name_order() -> None:
    names = [*SHARDS, "shard-d"]
    reference = Ring(names)
    expected = owners(reference)
    expected_users = [reference.owner(user) for user in USERS]

    for order in itertools.permutations(names):
        ring = Ring(order)
        assert ring.shards == tuple(sorted(names))
        assert ring == reference
        assert owners(ring) == expected
        assert [ring.owner(user) for user in USERS] == expected_users

    assert owners(Ring([*names, *reversed(names)])) == expected


def test_colliding_names_own_the_same_slots_in_any_order() -> None:
    points = [
        {point for point, _ in HashRing([name], hash_fn="ketama").get_points()}
        for name in COLLIDING
    ]
    assert points[0] & points[1], "the names no longer collide"

    expected = owners(Ring(COLLIDING))
    assert owners(Ring(reversed(COLLIDING))) == expected
    assert owners(Ring({*COLLIDING, *SHARDS})) == owners(
        Ring([*SHARDS, *reversed(COLLIDING)])
    )


def test_owner_is_the_same_under_other_hash_seeds() -> None:
    one = owners_in_subprocess("1")
    other = owners_in_subprocess("12345")
    ring = Ring([*SHARDS, *COLLIDING])
    here = [ring.owner(user) for user in USERS]

    # Different str hashes prove the seeds really took effect.
    assert one["hash"] != other["hash"]
    assert one["owners"] == other["owners"] == here
    assert one["slots"] == other["slots"] == owners(ring)
    assert set(here) == set(ring.shards)


@pytest.mark.parametrize("new", ["shard-d", "0-first", "zz-last"])
def test_adding_a_fourth_shard_moves_a_quarter_to_it(new: str) -> None:
    before = owners(Ring(SHARDS))
    grown = Ring([*SHARDS, new])
    after = owners(grown)
    moved = [slot for slot in range(SLOT_COUNT) if before[slot] != after[slot]]

    assert 0.15 <= len(moved) / SLOT_COUNT <= 0.35
    assert {after[slot] for slot in moved} == {new}
    assert moved == grown.slots_of(new)


@pytest.mark.parametrize("gone", [*SHARDS, "shard-d"])
def test_removing_a_shard_moves_only_its_slots(gone: str) -> None:
    full = Ring([*SHARDS, "shard-d"])
    rest = [name for name in full.shards if name != gone]
    before = owners(full)
    after = owners(Ring(rest))
    moved = [slot for slot in range(SLOT_COUNT) if before[slot] != after[slot]]

    assert moved == full.slots_of(gone)
    assert gone not in after
    assert {after[slot] for slot in moved} <= set(rest)


@pytest.mark.parametrize(
    "names",
    [["solo"], SHARDS, [f"s{i}" for i in range(10)]],
)
def test_slots_of_partitions_every_slot(names: list[str]) -> None:
    ring = Ring(names)
    parts = {name: ring.slots_of(name) for name in ring.shards}

    every = sorted(itertools.chain.from_iterable(parts.values()))
    assert every == list(range(SLOT_COUNT))
    for name, slots in parts.items():
        assert slots, f"{name} owns no slot"
        assert slots == sorted(slots)
        assert all(ring.owner_of_slot(slot) == name for slot in slots)
    assert ring.slots_of("not-in-ring") == []


@pytest.mark.parametrize(
    "name",
    ["a", "0", "a" * 63, "shard-1.eu", "1-", "a..b"],
)
def test_valid_shard_names(name: str) -> None:
    assert check_shard_name(name) == name
    assert Ring([name]).shards == (name,)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Shard-a",
        "-shard",
        ".shard",
        "shard_a",
        "shard a",
        " shard",
        "a" * 64,
        "shärd",
        "shard\n",
        "host:5000",
        "a/b",
    ],
)
def test_invalid_shard_names_raise(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_shard_name(name)
    with pytest.raises(InvalidArgument):
        Ring([*SHARDS, name])


@pytest.mark.parametrize("shards", [[], (), set(), iter(())])
def test_empty_ring_raises(shards: Iterable[str]) -> None:
    with pytest.raises(InvalidArgument):
        Ring(shards)
