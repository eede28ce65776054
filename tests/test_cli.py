"""The chronoscore command against a real cluster, and the demo on real data."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chronoscore import Client, Update
from chronoscore._cluster import LocalCluster
from chronoscore._demo import read_batting


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "chronoscore", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _json(*args: str) -> Any:
    return json.loads(_run(*args, "--json").stdout)


def test_submit_top_rank_user(cluster: LocalCluster) -> None:
    target = ["--target", cluster.target]
    assert _json("user", "ada", "Ada Lovelace", *target)["display_name"] == (
        "Ada Lovelace"
    )
    _json("create", "chess", *target)
    submitted = _json("submit", "chess", "ada", "1200", *target)
    assert (submitted["score"], submitted["changed"]) == (1200, True)
    _json("submit", "chess", "bob", "1300", "--mode", "set", *target)
    _json("submit", "chess", "ada", "150", "--mode", "increment", *target)

    top = _json("top", "chess", "--limit", "5", *target)["entries"]
    assert [(e["user_id"], e["score"], e["rank"]) for e in top] == [
        ("ada", 1350, 1),
        ("bob", 1300, 2),
    ]
    assert top[0]["display_name"] == "Ada Lovelace"
    rank = _json("rank", "chess", "bob", *target)
    assert (rank["rank"], rank["total"]) == (2, 2)

    human = _run("top", "chess", *target).stdout
    assert "Ada Lovelace" in human and "1350" in human
    assert "2 of 2 entries" in human
    # Past the end: no rows, and the footer says so.
    beyond = _run("page", "chess", "5", *target).stdout
    assert "0 of 2 entries" in beyond


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["rank", "chess", "nobody"], "NOT_FOUND"),
        (["top", "chess", "--limit", "5000"], "INVALID_ARGUMENT"),
        (["submit", "", "ada", "1"], "INVALID_ARGUMENT"),
    ],
)
def test_errors_are_reported_not_raised(
    cluster: LocalCluster, args: list[str], code: str
) -> None:
    result = _run(*args, "--target", cluster.target, "--json", check=False)
    assert result.returncode == 1
    error = json.loads(result.stderr)["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "score",
    ["1.5", "nan", "inf", "1e3", "9223372036854775808", "1_000", "\u0663", " 7"],
)
def test_non_integer_scores_are_refused(score: str) -> None:
    result = _run("submit", "b", "u", score, check=False)
    assert result.returncode == 2
    assert "score" in result.stderr or "64-bit" in result.stderr


def test_unreachable_target_is_unavailable() -> None:
    result = _run(
        "top", "b", "--target", "127.0.0.1:1", "--timeout", "2", "--json", check=False
    )
    assert result.returncode == 1
    assert json.loads(result.stderr)["error"]["code"] == "UNAVAILABLE"


def test_batting_records_give_the_known_totals() -> None:
    names, rows = read_batting()
    assert names["bondsba01"] == "Barry Bonds"
    assert [r.year for r in rows] == sorted(r.year for r in rows)
    career = sum(r.home_runs for r in rows if r.player_id == "bondsba01")
    assert career == 762


def test_demo_refuses_to_double_count(cluster: LocalCluster) -> None:
    _run("create", "hr-career", "--target", cluster.target)
    _run("submit", "hr-career", "someone", "1", "--target", cluster.target)
    result = _run("demo", "baseball", "--target", cluster.target, check=False)
    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stderr and "--force" in result.stderr


def test_demo_replays_to_the_published_answers() -> None:
    doc = _json("demo", "baseball")
    career = [(e["display_name"], e["score"]) for e in doc["top"]["hr-career"]]
    assert career == [
        ("Barry Bonds", 762),
        ("Hank Aaron", 755),
        ("Babe Ruth", 714),
        ("Alex Rodriguez", 696),
        ("Albert Pujols", 662),
    ]
    season = doc["top"]["hr-2001"][0]
    assert (season["display_name"], season["score"], season["rank"]) == (
        "Barry Bonds",
        73,
        1,
    )
    assert doc["updates"] == 3 * len(read_batting()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _up(
    data_dir: Path, port: int, shards: int = 3
) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronoscore", "up", "--shards", str(shards)]
        + ["--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "ChronoScore is up" in line:
            return proc, lines
    raise AssertionError(f"up exited with {proc.wait()} before serving")


def _interrupt(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


def test_up_keeps_scores_in_its_data_dir(tmp_path: Path) -> None:
    port = _free_port()
    target = ["--target", f"127.0.0.1:{port}"]
    proc, _ = _up(tmp_path / "data", port)
    try:
        _json("create", "chess", *target)
        with Client(f"127.0.0.1:{port}") as client:
            updates = [Update("chess", f"p{i}", 1000 + i) for i in range(200)]
            assert all(r.ok for r in client.submit_scores(updates))
    finally:
        _interrupt(proc)

    # A fourth shard on the same data joins the ring and takes its share.
    proc, lines = _up(tmp_path / "data", port, shards=4)
    try:
        assert any("adding shard-3" in line for line in lines), lines
        assert "4 shards" in lines[-1]
        rank = _json("rank", "chess", "p0", *target)
        assert (rank["score"], rank["rank"], rank["total"]) == (1000, 200, 200)
    finally:
        _interrupt(proc)

    # A smaller --shards removes nothing, and says so.
    proc, lines = _up(tmp_path / "data", port, shards=2)
    try:
        assert any("already has 4 shards" in line for line in lines), lines
        assert "4 shards" in lines[-1]
        assert _json("rank", "chess", "p0", *target)["total"] == 200
    finally:
        _interrupt(proc)


@pytest.mark.parametrize(
    "args",
    [
        ["top", "b", "--limit", "2147483648"],
        ["top", "b", "--timeout", "nan"],
        ["top", "b", "--timeout", "-1"],
        ["up", "--port", "70000"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = _run(*args, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "usage:" in result.stderr


def test_submit_batch_and_friends(cluster: LocalCluster, tmp_path: Path) -> None:
    target = ["--target", cluster.target]
    _json("create", "coins", "--operator", "increment", *target)
    lines = tmp_path / "updates.jsonl"
    lines.write_text(
        '{"leaderboard": "coins", "user_id": "ada", "score": 5, "request_id": "r1"}\n'
        "\n"
        '{"leaderboard": "coins", "user_id": "bob", "score": 7}\n'
        '{"leaderboard": "coins", "user_id": "ada", "score": 5, "request_id": "r1"}\n'
        '{"leaderboard": "nowhere", "user_id": "eve", "score": 1}\n'
    )
    result = _run("submit-batch", str(lines), *target, "--json", check=False)
    assert result.returncode == 1
    docs = json.loads(result.stdout)["results"]
    assert [d.get("score") for d in docs] == [5, 7, 5, None]
    assert docs[2]["replayed"] and docs[3]["error"]["code"] == "NOT_FOUND"

    friends = _json("friends", "coins", "ada", "bob", "zed", *target)
    assert [e["user_id"] for e in friends["entries"]] == ["bob", "ada"]
    assert friends["list_ranks"] == [1, 2] and friends["missing"] == ["zed"]

    for bad_line, says in (
        ('{"leaderboard": "coins", "user_id": "ada", "score": 1.5}', "whole number"),
        ('{"leaderboard": "coins", "user_id": null, "score": 1}', "user_id"),
        ('{"leaderboard": "coins", "user_id": "ada"}', "missing score"),
        ("[1, 2]", "JSON object"),
        (
            '{"leaderboard": "coins", "user_id": "a", "score": 9223372036854775808}',
            "64-bit",
        ),
        ("{not json", "not JSON"),
        ('{"leaderboard": "coins", "user_id": "a", "score": 1, "Mode": "set"}', "Mode"),
        ('{"leaderboard": "coins", "user_id": "a", "score": 1, "score": 2}', "twice"),
        ('{"leaderboard": "coins", "user_id": "a", "score": 1, "mode": "mul"}', "mul"),
        ('{"leaderboard": "coins", "user_id": "  ", "score": 1}', "user_id"),
        ('{"leaderboard": "Bad Name!", "user_id": "a", "score": 1}', "leaderboard"),
        ('{"leaderboard": "coins", "user_id": "\udcff", "score": 1}', "UTF-8"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n" + bad_line + "\n", errors="surrogateescape")
        result = _run("submit-batch", str(bad), *target, "--json", check=False)
        assert result.returncode == 1
        message = json.loads(result.stderr)["error"]["message"]
        assert message.startswith("line 2: ") and says in message, message

    # A good line before a bad one: the bad one is still named by its line.
    bad.write_text(
        '{"leaderboard": "coins", "user_id": "a", "score": 1}\n\n'
        '{"leaderboard": "coins", "user_id": "", "score": 1}\n'
    )
    result = _run("submit-batch", str(bad), *target, "--json", check=False)
    assert json.loads(result.stderr)["error"]["message"].startswith("line 3: ")

    # Failures name the line they came from, blank lines included.
    result = _run("submit-batch", str(lines), *target, check=False)
    assert "line 5: NOT_FOUND" in result.stderr
