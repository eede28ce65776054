"""A local cluster: N shard-node processes and one coordinator process.

``chronoscore up`` runs one in the foreground, the demo runs one of its
own, and the tests run them to kill and restart real processes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .errors import FailedPrecondition

__all__ = ["LocalCluster", "embedded_postgres", "default_data_dir"]

logger = logging.getLogger("chronoscore.cluster")

# Shards serve only the coordinator, so they listen on loopback whatever
# address the coordinator is given.
_SHARD_HOST = "127.0.0.1"


def default_data_dir() -> Path:
    """Where ``chronoscore up`` keeps its embedded PostgreSQL by default.

    As root, /var/lib/chronoscore: pgserver then runs PostgreSQL as an
    unprivileged user and opens every parent directory of the data to
    it, which must not include root's home.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/chronoscore")
    import platformdirs

    return Path(platformdirs.user_data_dir("chronoscore"))


def _die_with_parent() -> None:
    """In a child: get SIGTERM when the supervisor dies, even by SIGKILL.

    Without it a killed ``chronoscore up`` would leave its shards
    serving with nobody to stop them. Linux only; elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run a PostgreSQL server whose data lives in ``data_dir``; yield its DSN.

    The server is the one shipped in the ``pgserver`` wheel. It stops
    when the block exits, and its data stays for the next start.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    logger.info("starting embedded PostgreSQL in %s", data_dir)
    with warnings.catch_warnings():
        # pgserver falls back to /tmp for its runtime files when
        # XDG_RUNTIME_DIR is unset, as in containers; that is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver

        server = pgserver.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="stop"
        )
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


class LocalCluster:
    """Shard nodes named ``shard-0``... and a coordinator, as processes.

    Shards listen on free ports, announced through port files; the
    coordinator starts once every shard is serving.
    """

    def __init__(
        self,
        dsn: str,
        shards: int = 3,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        log_level: str = "INFO",
        metrics_ports: dict[str, int] | None = None,
        shard_args: list[str] | None = None,
        coordinator_args: list[str] | None = None,
    ) -> None:
        if shards < 1:
            raise FailedPrecondition(f"a cluster needs at least 1 shard, got {shards}")
        self.dsn = dsn
        self.host = host
        self.port = port
        self.names = [f"shard-{i}" for i in range(shards)]
        self.log_dir = log_dir
        self.log_level = log_level
        self.metrics_ports = metrics_ports or {}
        # Extra flags, such as TLS files and tokens.
        self.shard_args = shard_args or []
        self.coordinator_args = coordinator_args or []
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chronoscore-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.shard_ports: dict[str, int] = {}
        self.coordinator_port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def target(self) -> str:
        """The coordinator's address for clients."""
        return f"{self.host}:{self.coordinator_port}"

    def start(self, timeout: float = 120.0) -> LocalCluster:
        """Start every process; on any failure stop those already started."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        # A database whose placement grew beyond `shards` (with
        # `chronoscore cluster add-shard`) needs those shards running too.
        for name in self._recorded_owners():
            if name not in self.names:
                logger.info("the placement also gives slots to %s", name)
                self.names.append(name)
        for name in self.names:
            self.start_shard(name, wait=False)
        for name in self.names:
            self.shard_ports[name] = self._wait_ready(name, timeout)

        self._spawn("coordinator", self._coordinator_args(self.port))
        self.coordinator_port = self._wait_ready("coordinator", timeout)

    def _recorded_owners(self) -> list[str]:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=10) as conn:
                rows = conn.execute("SELECT DISTINCT owner FROM ring_slots").fetchall()
        except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
            # A new database, or one the shards will report unreachable.
            return []
        return sorted(str(row[0]) for row in rows)

    def start_shard(
        self, name: str, *, wait: bool = True, timeout: float = 120.0
    ) -> None:
        """Start (or restart, on its old port) one shard process."""
        port = self.shard_ports.get(name, 0)
        self._spawn(
            name,
            [
                "shard_node",
                "--name",
                name,
                "--ring",
                ",".join(self.names),
                "--dsn",
                self.dsn,
                "--port",
                str(port),
            ],
        )
        if wait:
            self.shard_ports[name] = self._wait_ready(name, timeout)

    def add_shard(self, name: str, timeout: float = 120.0) -> None:
        """Start one more shard process. It owns no slots until
        ``chronoscore cluster add-shard`` moves some to it."""
        if name in self.names:
            raise FailedPrecondition(f"{name} is already part of this cluster")
        self.names.append(name)
        self.start_shard(name, timeout=timeout)

    def stop_shard(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM one shard, e.g. after ``remove-shard`` emptied it."""
        self._terminate([name], timeout)
        self.names.remove(name)
        self.shard_ports.pop(name, None)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to a process and wait for it; return its exit code."""
        proc = self.processes[name]
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def restart_coordinator(self, timeout: float = 60.0) -> None:
        self.kill("coordinator", signal.SIGTERM)
        self._spawn("coordinator", self._coordinator_args(self.coordinator_port))
        self._wait_ready("coordinator", timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the coordinator, then the shards; SIGKILL what lingers.

        The coordinator goes first so no new writes reach a shard that is
        flushing its last commits.
        """
        self._terminate(["coordinator"], timeout)
        self._terminate(self.names, timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _terminate(self, names: list[str], timeout: float) -> None:
        running = [
            (name, proc)
            for name in names
            if (proc := self.processes.get(name)) is not None and proc.poll() is None
        ]
        for _, proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()

    def restart(self, name: str, timeout: float = 120.0) -> None:
        """Start an exited process again on its old port."""
        if name == "coordinator":
            self._spawn("coordinator", self._coordinator_args(self.coordinator_port))
            self._wait_ready("coordinator", timeout)
        else:
            self.start_shard(name, timeout=timeout)

    def wait(self) -> str:
        """Block until any process exits; return its name."""
        while True:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    return name
            time.sleep(0.2)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _coordinator_args(self, port: int) -> list[str]:
        shards = ",".join(
            f"{n}={_SHARD_HOST}:{self.shard_ports[n]}" for n in self.names
        )
        return [
            "coordinator",
            "--shards",
            shards,
            "--dsn",
            self.dsn,
            "--port",
            str(port),
        ]

    def _port_file(self, name: str) -> Path:
        return self.workdir / f"{name}.port"

    def _spawn(self, name: str, args: list[str]) -> None:
        port_file = self._port_file(name)
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            *args,
            "--host",
            self.host if name == "coordinator" else _SHARD_HOST,
            "--port-file",
            str(port_file),
            "--log-level",
            self.log_level,
            "--metrics-port",
            str(self.metrics_ports.get(name, 0)),
            *(self.coordinator_args if name == "coordinator" else self.shard_args),
        ]
        stderr = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stderr = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A session of its own keeps Ctrl-C at the terminal away from the
        # child, so the supervisor decides the order things stop in.
        self.processes[name] = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if stderr is not None:
            stderr.close()

    def _wait_ready(self, name: str, timeout: float) -> int:
        port_file = self._port_file(name)
        proc = self.processes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                return int(port_file.read_text())
            if proc.poll() is not None:
                raise FailedPrecondition(
                    f"{name} exited with code {proc.returncode} before serving"
                    + self._log_hint(name)
                )
            time.sleep(0.05)
        raise FailedPrecondition(
            f"{name} did not start within {timeout:.0f}s" + self._log_hint(name)
        )

    def _log_hint(self, name: str) -> str:
        if self.log_dir is None:
            return ""
        return f"; see {self.log_dir / (name + '.log')}"
