"""A throw-away PostgreSQL cluster from Debian's packages, on a free loopback port."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.system.ports import LOOPBACK, free_port, is_listening
from tests.system.waiting import wait_for

#: The account Debian's packages create; initdb refuses to run as root.
POSTGRES_USER = "postgres"
DATABASE = "airflow"


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``, or ``None``."""
    candidates = [Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not candidates:
        return None
    return max(candidates, key=lambda path: _version_key(path.parent.name))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


class PostgresCluster:
    """
    ``initdb`` a cluster in a fresh temporary directory, serve it on 127.0.0.1 only, and remove it on exit.

    The directory is made outside the caller's (possibly private) working directory, because the
    server runs as ``postgres`` and must be able to reach it. Its log is ``<log_dir>/postgres.log``.

    :param log_dir: where the server log is copied when the cluster stops.
    :param bin_dir: PostgreSQL's programs; by default the newest Debian-installed version.
    """

    def __init__(self, log_dir: Path, *, bin_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.bin_dir = bin_dir or postgres_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: run scripts/install-system-test-deps.sh")
        self.port = free_port()
        self.root: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def server_log(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    @property
    def sqlalchemy_url(self) -> str:
        """The URL Airflow's ``[database] sql_alchemy_conn`` takes (sync driver: psycopg2)."""
        return f"postgresql+psycopg2://{POSTGRES_USER}@{LOOPBACK}:{self.port}/{DATABASE}"

    def connect_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``psycopg2.connect``."""
        return {"host": LOOPBACK, "port": self.port, "user": POSTGRES_USER, "dbname": DATABASE}

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        self.stop()

    def start(self) -> None:
        """Create the cluster and the ``airflow`` database, and wait until the server accepts connections."""
        self.root = Path(tempfile.mkdtemp(prefix="qwen-system-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, POSTGRES_USER, POSTGRES_USER)
        self._as_postgres(
            self._bin("initdb"), "-D", self.data_dir, "-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        # Throw-away data: durability is not worth the disk waits.
        options = (
            f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._as_postgres(
            self._bin("pg_ctl"), "start", "-D", self.data_dir, "-l", self.server_log, "-o", options, "-w", "-t", "60"
        )
        wait_for(lambda: is_listening(self.port), timeout=30, what=f"PostgreSQL on port {self.port}")
        self._as_postgres(self._bin("createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", POSTGRES_USER, DATABASE)

    def stop(self) -> None:
        """Stop the server (fast, then immediate), keep its log in ``log_dir`` and remove the cluster."""
        if self.root is None:
            return
        try:
            postmaster = self._postmaster_pid()
            if postmaster is not None:
                for mode in ("fast", "immediate"):
                    result = self._as_postgres(
                        self._bin("pg_ctl"), "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "30", check=False
                    )
                    if result.returncode == 0:
                        break
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(postmaster, signal.SIGKILL)
            if self.server_log.exists():
                self.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.server_log, self.log_dir / "postgres.log")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _bin(self, program: str) -> Path:
        assert self.bin_dir is not None
        return self.bin_dir / program

    def _as_postgres(self, *command: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(part) for part in command]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", POSTGRES_USER, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result
