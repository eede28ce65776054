"""The ``chronoscore`` command.

Output is for people by default; ``--json`` prints one JSON document
for scripts instead. Errors go to stderr (as JSON with ``--json``) and
exit with status 1; bad command lines exit with status 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._bench import SYSTEMS
from ._cluster import LocalCluster
from ._keys import SCORE_MAX, SCORE_MIN
from ._validate import MAX_BATCH
from .client import (
    MODES,
    RESETS,
    SORT_ORDERS,
    TIE_POLICIES,
    Client,
    Entry,
    Leaderboard,
    Page,
    Update,
)
from .errors import (
    ChronoscoreError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

__all__ = ["main"]

DEFAULT_TARGET = "127.0.0.1:50051"

# Data from the cluster is printed as-is, never read as rich markup, and
# long lines are not wrapped when the output is not a terminal.
console = Console(highlight=False, soft_wrap=True)


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
    client.add_argument(
        "--token",
        default=os.environ.get("CHRONOSCORE_TOKEN"),
        help="bearer token (default: $CHRONOSCORE_TOKEN)",
    )
    client.add_argument("--tls-ca", type=Path, help="CA to trust for TLS")
    client.add_argument("--tls-cert", type=Path, help="certificate for mutual TLS")
    client.add_argument("--tls-key", type=Path, help="key for mutual TLS")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds per call"
    )
    output.add_argument("--json", action="store_true", help="print JSON")

    up = commands.add_parser(
        "up", help="run a local cluster in the foreground until Ctrl-C"
    )
    up.add_argument("--shards", type=_positive, default=3)
    up.add_argument("--port", type=_port, default=50051, help="coordinator port")
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

    def command(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[client, output], help=help)
        sub.set_defaults(run=run)
        return sub

    def period(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--period", default="", help="a past period's label (default: current)"
        )

    create = command("create", "create a leaderboard", _create)
    create.add_argument("leaderboard")
    create.add_argument("--order", choices=list(SORT_ORDERS), default="descending")
    create.add_argument("--operator", choices=list(MODES), default="best")
    create.add_argument("--ties", choices=list(TIE_POLICIES), default="earliest")
    create.add_argument("--reset", choices=list(RESETS), default="none")
    create.add_argument("--keep", type=_int32, default=0, help="past periods to keep")

    command("boards", "list the leaderboards", _boards)
    board = command("board", "show one leaderboard's configuration", _board)
    board.add_argument("leaderboard")
    delete = command("delete", "delete a leaderboard and its entries", _delete)
    delete.add_argument("leaderboard")

    submit = command("submit", "submit one score update", _submit)
    submit.add_argument("leaderboard")
    submit.add_argument("user_id")
    submit.add_argument("score", type=_int64)
    submit.add_argument(
        "--mode", choices=list(MODES), help="default: the leaderboard's operator"
    )
    submit.add_argument("--metadata", help="text stored with the entry")
    submit.add_argument("--request-id", default="", help="makes retries safe")

    batch = command(
        "submit-batch",
        "submit many updates: JSON lines from a file or stdin",
        _submit_batch,
    )
    batch.add_argument(
        "file",
        nargs="?",
        type=argparse.FileType("r"),
        default=sys.stdin,
        help='lines like {"leaderboard": "weekly", "user_id": "ada", "score": 5,'
        ' "mode": "increment", "request_id": "r1"}; default: stdin',
    )

    remove = command("remove", "remove a user from a leaderboard", _remove)
    remove.add_argument("leaderboard")
    remove.add_argument("user_id")
    remove_user = command(
        "remove-user", "remove a user from every leaderboard", _remove_user
    )
    remove_user.add_argument("user_id")

    user = command("user", "create or rename a user profile", _user)
    user.add_argument("user_id")
    user.add_argument("display_name")

    top = command("top", "show the best entries of a leaderboard", _top)
    top.add_argument("leaderboard")
    top.add_argument("--limit", type=_int32, default=10, help="1 to 1000")
    period(top)

    rank = command("rank", "show one user's global rank", _rank)
    rank.add_argument("leaderboard")
    rank.add_argument("user_id")
    period(rank)

    around = command("around", "show a user and their neighbours", _around)
    around.add_argument("leaderboard")
    around.add_argument("user_id")
    around.add_argument("--above", type=_int32, default=5, help="0 to 100")
    around.add_argument("--below", type=_int32, default=5, help="0 to 100")
    period(around)

    page = command("page", "show entries from any offset", _page)
    page.add_argument("leaderboard")
    page.add_argument("offset", type=_int64, help="0-based position of the first")
    page.add_argument("--limit", type=_int32, default=10, help="1 to 1000")
    period(page)

    friends = command("friends", "rank a list of users (friends)", _friends)
    friends.add_argument("leaderboard")
    friends.add_argument("user_ids", nargs="+")
    period(friends)

    watch = command("watch", "print the top each time it changes", _watch)
    watch.add_argument("leaderboard")
    watch.add_argument("--limit", type=_int32, default=10)
    watch.add_argument("--interval-ms", type=_int32, default=1000, help="100 to 60000")

    bench = commands.add_parser("bench", help="measure against Redis and PostgreSQL")
    benches = bench.add_subparsers(required=True, metavar="BENCHMARK")
    compare = benches.add_parser(
        "compare", help="ChronoScore, Redis and plain PostgreSQL side by side"
    )
    compare.add_argument(
        "--users", type=_positive, default=100_000, help="users in the workload"
    )
    compare.add_argument(
        "--clients",
        type=_positive,
        default=2,
        help="client processes for batched ingest, the same for every system",
    )
    compare.add_argument(
        "--shards", type=_positive, default=4, help="ChronoScore shards"
    )
    compare.add_argument(
        "--calls", type=_positive, default=2000, help="calls timed per read kind"
    )
    _dsn_argument(compare)
    compare.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/15",
        help='Redis to compare with; its key "bench" is replaced',
    )
    compare.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="where the JSON and chart go; its earlier results feed the"
        " scaling targets (default: benchmarks/results)",
    )
    compare.add_argument(
        "--systems",
        type=_systems,
        default=",".join(SYSTEMS),
        help="comma-separated, of chronoscore, redis, postgresql (default: all)",
    )
    compare.add_argument(
        "--restart-users",
        type=_positive,
        help="entries in the shard whose restart is timed (default: --users)",
    )
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(run=_bench_compare)

    soak = benches.add_parser(
        "soak", help="mixed load on a local 3-shard cluster; errors and memory"
    )
    soak.add_argument("--minutes", type=float, default=3.0)
    soak.add_argument("--users", type=_positive, default=20_000)
    _dsn_argument(soak)
    soak.add_argument("--json", action="store_true", help="print JSON")
    soak.set_defaults(run=_bench_soak)

    cluster = commands.add_parser(
        "cluster", help="see the placement; add and remove shards online"
    )
    clusters = cluster.add_subparsers(required=True, metavar="ACTION")
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--dsn",
        default=os.environ.get("CHRONOSCORE_DSN"),
        help="the cluster's PostgreSQL (default: $CHRONOSCORE_DSN)",
    )
    admin.add_argument("--json", action="store_true", help="print JSON")
    moving = argparse.ArgumentParser(add_help=False, parents=[admin])
    moving.add_argument(
        "--slots-per-step",
        type=_positive,
        default=256,
        help="slots moved per transaction (of 16384); fewer means shorter"
        " pauses for the users being moved (default: %(default)s)",
    )
    moving.add_argument(
        "--wait",
        type=_seconds,
        default=60.0,
        help="seconds to wait for a shard to take its new slots",
    )
    status = clusters.add_parser(
        "status", parents=[admin], help="members, slots per shard, and health"
    )
    status.set_defaults(run=_cluster_status)
    add = clusters.add_parser(
        "add-shard",
        parents=[moving],
        help="make a running shard a member and move its share of slots to it",
    )
    add.add_argument("name", help="the new shard's --name")
    add.set_defaults(run=_cluster_move, action="add")
    remove = clusters.add_parser(
        "remove-shard",
        parents=[moving],
        help="move a shard's slots to the other members; then it can stop",
    )
    remove.add_argument("name")
    remove.set_defaults(run=_cluster_move, action="remove")
    resume = clusters.add_parser(
        "rebalance",
        parents=[moving],
        help="finish an interrupted add-shard or remove-shard",
    )
    resume.set_defaults(run=_cluster_move, action="resume", name=None)

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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most 3600"
        )
    return value


def _port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return value


def _int32(text: str) -> int:
    value = _int64(text)
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is out of range")
    return value


def _dsn_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CHRONOSCORE_DSN"),
        help="PostgreSQL to use (default: $CHRONOSCORE_DSN, else an embedded one)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _int64(text: str) -> int:
    # int() would also take "1_000", " 7 " and non-ASCII digits.
    if not _INTEGER.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer; scores are whole numbers like -12 or 300"
        )
    value = int(text)
    if not -(1 << 63) <= value < (1 << 63):
        raise argparse.ArgumentTypeError(f"{value} does not fit in a signed 64-bit int")
    return value


def _client(args: argparse.Namespace) -> Client:
    return Client(
        args.target,
        timeout=args.timeout,
        token=args.token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _create(args: argparse.Namespace) -> None:
    with _client(args) as client:
        board = client.create_leaderboard(
            args.leaderboard,
            sort_order=args.order,
            operator=args.operator,
            tie_policy=args.ties,
            reset=args.reset,
            keep_periods=args.keep,
        )
    _show_board(args, board)


def _board(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _show_board(args, client.get_leaderboard(args.leaderboard))


def _show_board(args: argparse.Namespace, board: Leaderboard) -> None:
    if args.json:
        _print_json(asdict(board))
        return
    period = board.current_period.label or "all time"
    console.print(
        f"{board.name}: {board.sort_order}, operator {board.operator},"
        f" ties {board.tie_policy}, reset {board.reset}"
        f" (keeps {board.keep_periods} past), current period {period}",
        markup=False,
    )


def _boards(args: argparse.Namespace) -> None:
    with _client(args) as client:
        boards = client.list_leaderboards()
    if args.json:
        _print_json({"leaderboards": [asdict(b) for b in boards]})
        return
    table = Table(title="leaderboards", title_justify="left")
    for column in ("name", "order", "operator", "ties", "reset", "keep"):
        table.add_column(column)
    for b in boards:
        table.add_row(
            Text(b.name),
            b.sort_order,
            b.operator,
            b.tie_policy,
            b.reset,
            str(b.keep_periods),
        )
    console.print(table)


def _delete(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.delete_leaderboard(args.leaderboard)
    _say(args, {"deleted": args.leaderboard}, f"deleted {args.leaderboard}")


def _submit(args: argparse.Namespace) -> None:
    metadata = None if args.metadata is None else args.metadata.encode()
    with _client(args) as client:
        result = client.submit_score(
            args.leaderboard,
            args.user_id,
            args.score,
            args.mode,
            metadata=metadata,
            request_id=args.request_id,
        )
    label = result.period.label if result.period else ""
    note = "" if result.changed else " (unchanged)"
    if result.replayed:
        note += " (an earlier request with this id)"
    _say(
        args,
        {
            "score": result.score,
            "changed": result.changed,
            "replayed": result.replayed,
            "period": asdict(result.period) if result.period else None,
        },
        f"{args.user_id} on {args.leaderboard}{_period(label)}: {result.score}{note}",
    )


def _submit_batch(args: argparse.Namespace) -> None:
    numbered = [(n, _update_from_json(line, n)) for n, line in _lines(args.file)]
    lines = [n for n, _ in numbered]
    updates = [update for _, update in numbered]
    results = []
    with _client(args) as client:
        for start in range(0, len(updates), MAX_BATCH):
            try:
                results += client.submit_scores(updates[start : start + MAX_BATCH])
            except InvalidArgument as exc:
                # The server names updates by their place in the batch.
                def line(found: re.Match[str], start: int = start) -> str:
                    return f"line {lines[start + int(found.group(1))]}: "

                raise InvalidArgument(
                    re.sub(r"updates\[(\d+)\]\.?", line, str(exc))
                ) from None
    docs = [
        {"score": r.score, "changed": r.changed, "replayed": r.replayed}
        if r.error is None
        else {"error": {"code": r.error.code.name, "message": str(r.error)}}
        for r in results
    ]
    failed = sum(r.error is not None for r in results)
    if args.json:
        _print_json({"results": docs})
    else:
        for n, r in zip(lines, results, strict=True):
            if r.error is not None:
                print(f"line {n}: {r.error.code.name}: {r.error}", file=sys.stderr)
        console.print(f"{len(results) - failed} applied, {failed} failed", markup=False)
    if failed:
        raise SystemExit(1)


def _lines(file: Any) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their numbers, decoded one at a time so a
    bad byte is reported on its own line."""
    for n, raw in enumerate(getattr(file, "buffer", file), start=1):
        try:
            line = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise InvalidArgument(f"line {n}: not valid UTF-8") from None
        if line.strip():
            yield n, line


_FIELDS = ("leaderboard", "user_id", "score", "mode", "metadata", "request_id")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) < len(pairs):
        raise ValueError("a field appears twice")
    return doc


def _update_from_json(line: str, n: int) -> Update:
    try:
        line.encode()
        doc = json.loads(line, object_pairs_hook=_object)
    except UnicodeEncodeError:
        raise InvalidArgument(f"line {n}: not valid UTF-8") from None
    except ValueError as exc:
        raise InvalidArgument(f"line {n}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"line {n}: expected a JSON object, got {line.strip()}")
    missing = [key for key in ("leaderboard", "user_id", "score") if key not in doc]
    if missing:
        raise InvalidArgument(f"line {n}: missing {', '.join(missing)}")
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise InvalidArgument(
            f"line {n}: unknown field {', '.join(unknown)}; the fields are"
            f" {', '.join(_FIELDS)}"
        )
    if doc.get("mode") is not None and doc["mode"] not in MODES:
        raise InvalidArgument(
            f"line {n}: mode {json.dumps(doc['mode'])} is not one of {', '.join(MODES)}"
        )
    try:
        score = doc["score"]
        if not isinstance(score, int) or isinstance(score, bool):
            raise ValueError(f"score must be a whole number, got {json.dumps(score)}")
        if not SCORE_MIN <= score <= SCORE_MAX:
            raise ValueError(f"score {score} is outside the signed 64-bit range")
        metadata = _text(doc, "metadata", None)
        return Update(
            _text(doc, "leaderboard"),
            _text(doc, "user_id"),
            score,
            _text(doc, "mode", None),
            None if metadata is None else metadata.encode(),
            _text(doc, "request_id", ""),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"line {n}: {exc}") from None


_REQUIRED = object()


def _text(doc: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """A string field of a JSON update; KeyError or ValueError if wrong."""
    if key not in doc and default is not _REQUIRED:
        return default
    value = doc[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {json.dumps(value)}")
    return value


def _remove(args: argparse.Namespace) -> None:
    with _client(args) as client:
        removed = client.remove_entry(args.leaderboard, args.user_id)
    _say(
        args,
        {"removed": removed},
        f"removed {_entries(removed)}",
    )


def _remove_user(args: argparse.Namespace) -> None:
    with _client(args) as client:
        removed = client.remove_user(args.user_id)
    _say(args, {"removed": removed}, f"removed {_entries(removed)} and the profile")


def _user(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.upsert_user(args.user_id, args.display_name)
    _say(
        args,
        {"user_id": args.user_id, "display_name": args.display_name},
        f"{args.user_id} is now {args.display_name!r}",
    )


def _top(args: argparse.Namespace) -> None:
    with _client(args) as client:
        page = client.top(args.leaderboard, args.limit, args.period)
    _show_page(args, args.leaderboard, page)


def _around(args: argparse.Namespace) -> None:
    with _client(args) as client:
        page = client.around(
            args.leaderboard, args.user_id, args.above, args.below, args.period
        )
    _show_page(args, args.leaderboard, page)


def _page(args: argparse.Namespace) -> None:
    with _client(args) as client:
        page = client.page(args.leaderboard, args.offset, args.limit, args.period)
    _show_page(args, args.leaderboard, page)


def _friends(args: argparse.Namespace) -> None:
    with _client(args) as client:
        found = client.entries(args.leaderboard, args.user_ids, args.period)
    if args.json:
        _print_json(
            {
                "entries": [_entry_json(e) for e in found.entries],
                "list_ranks": found.list_ranks,
                "missing": found.missing,
                "total": found.total,
                "period": asdict(found.period),
            }
        )
        return
    title = args.leaderboard + (
        f" ({found.period.label})" if found.period.label else ""
    )
    print_entries(title, found.entries, found.total, found.list_ranks)
    if found.missing:
        console.print(f"no entry: {', '.join(found.missing)}", markup=False)


def _watch(args: argparse.Namespace) -> None:
    with _client(args) as client:
        for page in client.watch_top(args.leaderboard, args.limit, args.interval_ms):
            _show_page(args, args.leaderboard, page)


def _show_page(args: argparse.Namespace, leaderboard: str, page: Page) -> None:
    if args.json:
        _print_json(
            {
                "entries": [_entry_json(e) for e in page.entries],
                "total": page.total,
                "period": asdict(page.period),
            }
        )
        return
    title = leaderboard + (f" ({page.period.label})" if page.period.label else "")
    print_entries(title, page.entries, page.total)


def _entry_json(entry: Entry) -> dict[str, Any]:
    doc = asdict(entry)
    doc["metadata"] = base64.b64encode(entry.metadata).decode()
    return doc


def _rank(args: argparse.Namespace) -> None:
    with _client(args) as client:
        found = client.rank(args.leaderboard, args.user_id, args.period)
    e = found.entry
    name = f" ({e.display_name})" if e.display_name else ""
    _say(
        args,
        {
            **_entry_json(e),
            "total": found.total,
            "shared_rank": found.shared_rank,
            "period": asdict(found.period),
        },
        f"{e.user_id}{name} is #{e.rank} of {found.total} on"
        f" {args.leaderboard}{_period(found.period.label)} with {e.score}"
        + (f" (shares #{found.shared_rank})" if found.shared_rank != e.rank else ""),
    )


def _period(label: str) -> str:
    return f" ({label})" if label else ""


def _say(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    if args.json:
        _print_json(doc)
    else:
        console.print(text, markup=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from ._cluster import default_data_dir, embedded_postgres

    # SIGTERM (from a service manager) stops the cluster like Ctrl-C, and
    # Ctrl-C works even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            data_dir = args.data_dir or default_data_dir()
            dsn = stack.enter_context(embedded_postgres(data_dir))
            console.print(f"embedded PostgreSQL data: {data_dir}", markup=False)
            console.print(f"its DSN (for chronoscore cluster): {dsn}", markup=False)
        cluster = LocalCluster(dsn, args.shards, host=args.host, port=args.port)
        stack.callback(cluster.stop)
        cluster.start()
        _join(dsn, cluster.names)
        if len(cluster.names) > args.shards:
            console.print(
                f"this cluster already has {len(cluster.names)} shards; --shards"
                f" {args.shards} removes none (`chronoscore cluster remove-shard"
                " NAME --dsn DSN` does)",
                markup=False,
            )
        if args.host in ("127.0.0.1", "localhost", "::1"):
            console.print("insecure local mode: plaintext gRPC on loopback only")
        else:
            console.print(
                f"WARNING: the public API is open without TLS or tokens on"
                f" {args.host}; shards stay on loopback",
                markup=False,
            )
        console.print(
            f"ChronoScore is up: coordinator at {cluster.target},"
            f" {len(cluster.names)} shards. Ctrl-C stops it."
        )
        try:
            _supervise(cluster)
        except KeyboardInterrupt:
            console.print("stopping")


def _join(dsn: str, names: list[str]) -> None:
    """Give shards that are not yet members (``up --shards`` raised on an
    existing data directory) their share of the users."""
    from ._rebalance import rebalance, status

    placement, _ = _run_admin(status(dsn))
    for name in names:
        if name not in placement.members:
            console.print(f"adding {name}: moving its share of users to it")
            moved = _run_admin(rebalance(dsn, add=name))
            console.print(f"moved {moved.slots_moved} of 16384 slots to {name}")


def _supervise(cluster: LocalCluster) -> None:
    """Restart processes that exit, unless one keeps failing at once."""
    started: dict[str, float] = {}
    while True:
        name = cluster.wait()
        code = cluster.processes[name].returncode
        if time.monotonic() - started.get(name, -math.inf) < 10:
            raise ChronoscoreError(
                f"{name} exited with code {code} again within 10 s; stopping"
            )
        console.print(f"{name} exited with code {code}; restarting it", markup=False)
        started[name] = time.monotonic()
        cluster.restart(name)


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"systems are some of {', '.join(SYSTEMS)}, not {text!r}"
        )
    return names


def _bench_compare(args: argparse.Namespace) -> None:
    from ._bench import Settings, compare, render, scaling, targets

    settings = Settings(
        users=args.users,
        clients=args.clients,
        shards=args.shards,
        calls=args.calls,
        dsn=args.dsn,
        redis_url=args.redis_url,
        out=args.out,
        systems=args.systems,
        restart_users=args.restart_users,
    )
    reports = compare(settings, console)
    complete = set(settings.systems) == set(SYSTEMS)
    met = (targets(reports) if complete else []) + scaling(args.out)
    if args.json:
        _print_json({"targets": [list(t) for t in met]})
        return
    # Tables this wide are unreadable wrapped; let a narrow terminal
    # cut lines instead.
    wide = Console(highlight=False, width=max(console.width, 150))
    if "chronoscore" in settings.systems:
        render(reports, wide)
    table = Table(title="targets", title_justify="left")
    for column in ("target", "measured", "met"):
        table.add_column(column)
    for target, measured, ok in met:
        table.add_row(target, measured, "n/a" if ok is None else "yes" if ok else "NO")
    wide.print(table)
    console.print(f"results in {args.out}", markup=False)


def _bench_soak(args: argparse.Namespace) -> None:
    import tempfile
    from contextlib import ExitStack

    from ._bench import soak
    from ._cluster import embedded_postgres

    with ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            dsn = stack.enter_context(embedded_postgres(tmp))
        cluster = stack.enter_context(LocalCluster(dsn, 3, log_level="WARNING"))
        pids = {name: p.pid for name, p in cluster.processes.items()}
        report = soak(cluster.target, pids, seconds=args.minutes * 60, users=args.users)
    growth = report.growth()
    if args.json:
        _print_json({**asdict(report), "growth": growth})
    else:
        total = sum(report.operations.values())
        console.print(
            f"{total:,} calls in {report.seconds:.0f}s"
            f" ({total / report.seconds:,.0f}/s), errors: {report.errors or 'none'}",
            markup=False,
        )
        for name, samples in report.rss_mb.items():
            console.print(
                f"{name}: RSS {samples[1]:.1f} MB after warm-up, {samples[-1]:.1f} MB"
                f" at the end ({growth[name]:.2f}x), max {max(samples):.1f} MB",
                markup=False,
            )
    if report.errors:
        raise SystemExit(1)


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
                    board: [_entry_json(e) for e in entries]
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


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n:,} entries"


def print_entries(
    title: str,
    entries: list[Entry],
    total: int | None = None,
    places: list[int] | None = None,
) -> None:
    caption = None if total is None else f"{len(entries):,} of {_entries(total)}"
    table = Table(title=title, title_justify="left", caption=caption)
    if places is not None:
        table.add_column("place", justify="right")
    table.add_column("rank", justify="right")
    table.add_column("user")
    table.add_column("name")
    table.add_column("score", justify="right")
    table.add_column("metadata")
    for i, e in enumerate(entries):
        meta = e.metadata.decode(errors="replace")
        place = [] if places is None else [str(places[i])]
        table.add_row(
            *place,
            str(e.rank),
            Text(e.user_id),
            Text(e.display_name),
            str(e.score),
            Text(meta),
        )
    console.print(table)


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")


def _admin_dsn(args: argparse.Namespace) -> str:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if not args.dsn:
        raise InvalidArgument(
            "give the cluster's PostgreSQL with --dsn or $CHRONOSCORE_DSN"
            " (chronoscore up prints it when it starts)"
        )
    try:
        conninfo_to_dict(args.dsn)
    except ProgrammingError as exc:
        raise InvalidArgument(f"--dsn is not a PostgreSQL DSN: {exc}") from None
    return str(args.dsn)


def _run_admin(coroutine: Any) -> Any:
    """Run an admin coroutine; an unreachable PostgreSQL is UNAVAILABLE."""
    import asyncio

    import psycopg

    try:
        return asyncio.run(coroutine)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot reach PostgreSQL: {exc}") from None
    except psycopg.Error as exc:
        # A read-only standby, or a role that may not change the
        # placement: nothing was changed.
        raise FailedPrecondition(f"PostgreSQL refused: {exc}") from None


def _cluster_status(args: argparse.Namespace) -> None:
    from ._rebalance import status

    placement, states = _run_admin(status(_admin_dsn(args)))
    # Shards that left and stopped are of no interest any more.
    running = {name for name, state in states.items() if state.running}
    names = sorted(set(placement.members) | set(placement.holders) | running)
    rows = []
    for name in names:
        state = states.get(name)
        rows.append(
            {
                "name": name,
                "member": name in placement.members,
                "slots": len(placement.slots_of(name)),
                "address": None if state is None else state.address,
                "running": name in running,
                "epoch": None if state is None else state.epoch,
                "applied_epoch": None if state is None else state.applied_epoch,
            }
        )
    pending = len(placement.pending())
    if args.json:
        _print_json(
            {"version": placement.version, "pending_slots": pending, "shards": rows}
        )
        return
    table = Table("shard", "member", "slots", "running", "address")
    for row in rows:
        table.add_row(
            row["name"],
            "yes" if row["member"] else "no",
            str(row["slots"]),
            "yes" if row["running"] else "no",
            row["address"] or "",
        )
    console.print(table)
    console.print(
        f"placement version {placement.version};"
        + (f" {pending} slots still to move" if pending else " balanced"),
        markup=False,
    )


def _cluster_move(args: argparse.Namespace) -> None:
    from rich.progress import Progress

    from ._rebalance import rebalance

    dsn = _admin_dsn(args)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("moving slots", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        moved = _run_admin(
            rebalance(
                dsn,
                add=args.name if args.action == "add" else None,
                remove=args.name if args.action == "remove" else None,
                slots_per_step=args.slots_per_step,
                wait=args.wait,
                progress=progress,
            )
        )
    counts = {n: len(moved.placement.slots_of(n)) for n in moved.placement.holders}
    _say(
        args,
        {
            "version": moved.placement.version,
            "slots_moved": moved.slots_moved,
            "steps": moved.steps,
            "slots": counts,
        },
        f"moved {moved.slots_moved} slots in {moved.steps} steps; slots per shard: "
        + ", ".join(f"{n} {c}" for n, c in counts.items()),
    )


def _fail(args: argparse.Namespace, exc: ChronoscoreError) -> None:
    code = exc.code.name
    if getattr(args, "json", False):
        error = {"error": {"code": code, "message": str(exc)}}
        sys.stderr.write(json.dumps(error) + "\n")
    else:
        sys.stderr.write(f"error: {code}: {exc}\n")
    raise SystemExit(1)
