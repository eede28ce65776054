"""The ``chronoscore`` command.

Output is for people by default; ``--json`` prints one JSON document
for scripts instead. Errors go to stderr (as JSON with ``--json``) and
exit with status 1; bad command lines exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .client import MODES, Client, Entry
from .errors import ChronoscoreError

__all__ = ["main"]

DEFAULT_TARGET = "127.0.0.1:50051"

# Data from the cluster is printed as-is, never read as rich markup.
console = Console(highlight=False)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except ChronoscoreError as exc:
        _fail(args, exc)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chronoscore",
        description="Real-time sharded leaderboards with exact global ranks.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--target",
        default=os.environ.get("CHRONOSCORE_TARGET", DEFAULT_TARGET),
        help="coordinator HOST:PORT (default: $CHRONOSCORE_TARGET or %(default)s)",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    output.add_argument("--json", action="store_true", help="print JSON")

    up = commands.add_parser(
        "up", help="run a local cluster in the foreground until Ctrl-C"
    )
    up.add_argument("--shards", type=_positive, default=3)
    up.add_argument("--port", type=int, default=50051, help="coordinator port")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--dsn",
        default=os.environ.get("CHRONOSCORE_DSN"),
        help="PostgreSQL to use (default: an embedded one in --data-dir)",
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        help="where the embedded PostgreSQL keeps its data"
        " (default: the user data directory)",
    )
    up.set_defaults(run=_up)

    submit = commands.add_parser(
        "submit", parents=[client, output], help="submit one score update"
    )
    submit.add_argument("leaderboard")
    submit.add_argument("user_id")
    submit.add_argument("score", type=_int64)
    submit.add_argument("--mode", choices=sorted(MODES), default="best")
    submit.set_defaults(run=_submit)

    top = commands.add_parser(
        "top", parents=[client, output], help="show the best entries of a leaderboard"
    )
    top.add_argument("leaderboard")
    top.add_argument("--limit", type=int, default=10, help="1 to 1000")
    top.set_defaults(run=_top)

    rank = commands.add_parser(
        "rank", parents=[client, output], help="show one user's global rank"
    )
    rank.add_argument("leaderboard")
    rank.add_argument("user_id")
    rank.set_defaults(run=_rank)

    user = commands.add_parser(
        "user", parents=[client, output], help="create or rename a user profile"
    )
    user.add_argument("user_id")
    user.add_argument("display_name")
    user.set_defaults(run=_user)

    demo = commands.add_parser("demo", help="replay a real data set")
    demos = demo.add_subparsers(required=True, metavar="DATASET")
    baseball = demos.add_parser(
        "baseball",
        help="Baseball Databank batting records, 1871-2020",
        parents=[output],
    )
    baseball.add_argument(
        "--target",
        default=None,
        help="a running coordinator (default: start an embedded cluster)",
    )
    baseball.add_argument("--shards", type=_positive, default=3)
    baseball.add_argument(
        "--force",
        action="store_true",
        help="replay even if the target already holds the demo leaderboards",
    )
    baseball.set_defaults(run=_demo_baseball)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _int64(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer; scores are whole numbers"
        ) from None
    if not -(1 << 63) <= value < (1 << 63):
        raise argparse.ArgumentTypeError(f"{value} does not fit in a signed 64-bit int")
    return value


def _client(args: argparse.Namespace) -> Client:
    return Client(args.target, timeout=args.timeout)


def _submit(args: argparse.Namespace) -> None:
    with _client(args) as client:
        score, changed = client.submit_score(
            args.leaderboard, args.user_id, args.score, args.mode
        )
    if args.json:
        _print_json({"score": score, "changed": changed})
    else:
        note = "" if changed else " (unchanged)"
        console.print(
            f"{args.user_id} on {args.leaderboard}: {score}{note}", markup=False
        )


def _top(args: argparse.Namespace) -> None:
    with _client(args) as client:
        entries = client.top(args.leaderboard, args.limit)
    if args.json:
        _print_json({"entries": [asdict(e) for e in entries]})
    else:
        print_entries(args.leaderboard, entries)


def _rank(args: argparse.Namespace) -> None:
    with _client(args) as client:
        found = client.rank(args.leaderboard, args.user_id)
    if args.json:
        _print_json({**asdict(found.entry), "total": found.total})
    else:
        e = found.entry
        name = f" ({e.display_name})" if e.display_name else ""
        console.print(
            f"{e.user_id}{name} is #{e.rank} of {found.total} on"
            f" {args.leaderboard} with {e.score}",
            markup=False,
        )


def _user(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.upsert_user(args.user_id, args.display_name)
    if args.json:
        _print_json({"user_id": args.user_id, "display_name": args.display_name})
    else:
        console.print(f"{args.user_id} is now {args.display_name!r}", markup=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from ._cluster import LocalCluster, default_data_dir, embedded_postgres

    # SIGTERM (from a service manager) stops the cluster like Ctrl-C, and
    # Ctrl-C works even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            data_dir = args.data_dir or default_data_dir()
            dsn = stack.enter_context(embedded_postgres(data_dir))
            console.print(f"embedded PostgreSQL data: {data_dir}")
        cluster = LocalCluster(dsn, args.shards, host=args.host, port=args.port)
        stack.callback(cluster.stop)
        cluster.start()
        if args.host in ("127.0.0.1", "localhost", "::1"):
            console.print("insecure local mode: plaintext gRPC on loopback only")
        console.print(
            f"ChronoScore is up: coordinator at {cluster.target},"
            f" {args.shards} shards. Ctrl-C stops it."
        )
        try:
            exited = cluster.wait()
            raise ChronoscoreError(f"{exited} exited; stopping the cluster")
        except KeyboardInterrupt:
            console.print("stopping")


def _demo_baseball(args: argparse.Namespace) -> None:
    from ._demo import replay_baseball

    started = time.perf_counter()
    result = replay_baseball(
        target=args.target,
        shards=args.shards,
        force=args.force,
        quiet=args.json,
        timeout=args.timeout,
    )
    elapsed = time.perf_counter() - started
    if args.json:
        _print_json(
            {
                "updates": result.updates,
                "replay_seconds": result.replay_seconds,
                "total_seconds": elapsed,
                "top": {
                    board: [asdict(e) for e in entries]
                    for board, entries in result.top.items()
                },
            }
        )
        return
    for board, entries in result.top.items():
        print_entries(board, entries)
    rate = result.updates / result.replay_seconds
    console.print(
        f"replayed {result.updates:,} updates in {result.replay_seconds:.1f}s"
        f" ({rate:,.0f} updates/s, acknowledged after commit)"
    )


def print_entries(leaderboard: str, entries: list[Entry]) -> None:
    table = Table(title=leaderboard, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("user")
    table.add_column("name")
    table.add_column("score", justify="right")
    for e in entries:
        table.add_row(str(e.rank), Text(e.user_id), Text(e.display_name), str(e.score))
    console.print(table)


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")


def _fail(args: argparse.Namespace, exc: ChronoscoreError) -> None:
    code = exc.code.name
    if getattr(args, "json", False):
        error = {"error": {"code": code, "message": str(exc)}}
        sys.stderr.write(json.dumps(error) + "\n")
    else:
        sys.stderr.write(f"error: {code}: {exc}\n")
    raise SystemExit(1)
