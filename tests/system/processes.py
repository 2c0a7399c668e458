"""A command run in its own session, its output in a log file, stoppable with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

#: Seconds a command and its descendants get to exit after SIGTERM before they are SIGKILLed.
STOP_GRACE_SECONDS = 15.0


def session_members(session_id: int) -> list[psutil.Process]:
    """Every live process of a session, found even after its leader died and they were re-parented."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def signal_session(session_id: int, sig: int) -> int:
    """Send ``sig`` to every process of a session; return how many were signalled."""
    signalled = 0
    for proc in session_members(session_id):
        try:
            proc.send_signal(sig)
            signalled += 1
        except psutil.Error:
            continue
    return signalled


class ManagedProcess:
    """
    One long-running command, started as the leader of a new session.

    Airflow moves task processes into process groups of their own, but never into another
    session, so the session is what finds everything the command started, even orphans.
    stdout and stderr are appended to ``log_path``, kept across restarts.

    :param name: what logs and errors call it.
    :param command: the argv to run.
    :param env: its whole environment.
    :param log_path: the file its output is appended to.
    :param cwd: its working directory.
    """

    def __init__(
        self, name: str, command: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The pid of the command itself, which is also its session id."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    def start(self) -> None:
        """Start the command; a previous run must have ended."""
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} starting {' '.join(self.command)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def is_running(self) -> bool:
        """Whether the command itself has not exited yet (a zombie not yet reaped has exited)."""
        if self._popen is None or self._popen.poll() is not None:
            return False
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def returncode(self) -> int | None:
        """The command's exit status, or ``None`` while it runs or before it started."""
        return None if self._popen is None else self._popen.poll()

    def process(self) -> psutil.Process:
        """The running command as a :class:`psutil.Process`."""
        if not self.is_running():
            raise RuntimeError(f"{self.name} is not running")
        return psutil.Process(self.pid)

    def members(self) -> list[psutil.Process]:
        """The command and every process it started that is still alive."""
        return session_members(self.pid) if self._popen is not None else []

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """
        Send ``sig`` to the command and everything it started, as when its machine or container dies.

        :raises TimeoutError: when any of them is still alive ``timeout`` seconds later (SIGKILL only;
            other signals are only sent).
        """
        if self._popen is None:
            return
        signal_session(self.pid, sig)
        if sig != signal.SIGKILL:
            return
        self._wait_until_gone(timeout, sig)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the command and its descendants, SIGKILL whatever is left after ``grace`` seconds."""
        stop_together([self], grace)

    def _wait_until_gone(self, timeout: float, sig: int) -> None:
        assert self._popen is not None
        deadline = time.monotonic() + timeout
        while True:
            # Signal again each round: a process may have forked after the previous signal.
            signal_session(self.pid, signal.SIGKILL)
            self._popen.poll()
            if not self.members():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (session {self.pid}) outlived signal {sig} by {timeout} s")
            time.sleep(0.1)

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log file."""
        return tail(self.log_path, lines)


def stop_together(processes: list[ManagedProcess], grace: float = STOP_GRACE_SECONDS) -> None:
    """
    SIGTERM each command and its descendants at once, SIGKILL whatever is left after ``grace``
    seconds: stopping takes as long as the slowest, not the sum.
    """
    started = [process for process in processes if process._popen is not None]
    for process in started:
        signal_session(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process.members() for process in started):
        for process in started:
            process._popen.poll()
        time.sleep(0.2)
    errors = []
    for process in started:
        try:
            process._wait_until_gone(10.0, signal.SIGKILL)
        except TimeoutError as err:
            errors.append(err)
    if errors:
        raise errors[0]


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 250 * lines))
        text = log.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])
