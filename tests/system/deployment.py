"""
A real Airflow deployment on this machine, and a real Apikley emulator process, for system tests and benchmarks.

:class:`AirflowDeployment` runs a throw-away PostgreSQL cluster as the metadata database, migrates
it, then runs the scheduler (LocalExecutor), dag-processor, triggerer and api-server as separate
processes, everything on 127.0.0.1. :class:`EmulatorProcess` runs ``python -m
airflow_provider_qwen.emulator`` as a process of its own. Both are context managers that stop
everything they started on every way out, KeyboardInterrupt included::

    with EmulatorProcess(workdir) as emulator, AirflowDeployment(
        workdir, dags_folder, env={"AIRFLOW_CONN_APIKLEY_DEFAULT": emulator.airflow_connection()}
    ) as deployment:
        run_id = deployment.trigger("my_dag", conf={...})
        assert deployment.wait_for_run("my_dag", run_id, timeout=600) == "success"

Component output goes to ``<workdir>/logs/<component>.log`` (task logs to
``<airflow_home>/logs``); :meth:`AirflowDeployment.log_tails` shows their last lines.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import requests

from tests.system.airflow_env import (
    DeploymentSettings,
    component_environment,
    environment_without_airflow,
    new_jwt_secret,
)
from tests.system.ports import LOOPBACK, free_port, is_listening
from tests.system.postgres import PostgresCluster
from tests.system.processes import ManagedProcess, stop_together, tail
from tests.system.rest_api import AirflowRestClient
from tests.system.waiting import StopWaiting, wait_for

__all__ = ["COMPONENTS", "AirflowDeployment", "EmulatorProcess"]

#: The Airflow components, each a separate process, and the ``airflow`` sub-command that runs it.
#: Log serving is skipped: it would listen on every interface, and task logs are local files here.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server",),
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer", "--skip-serve-logs"),
}

#: The components ``GET /api/v2/monitor/health`` reports on, by their name there.
HEALTH_KEYS = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag_processor"}

MIGRATE_TIMEOUT_SECONDS = 300.0
START_TIMEOUT_SECONDS = 180.0
PARSE_TIMEOUT_SECONDS = 120.0
FINAL_RUN_STATES = ("success", "failed")


class EmulatorProcess:
    """
    The Apikley emulator as a separate ``python -m airflow_provider_qwen.emulator`` process on a free loopback port.

    :param workdir: its log goes to ``<workdir>/logs/emulator.log``.
    :param latency: seconds each task spends waiting, queuing and generating (before the emulator's jitter).
    :param rate_limit: createTask calls accepted per key per ``rate_window``; the default of 1000 never binds,
        unlike the emulator's own default of 20, which throttles runs of hundreds of edits.
    :param rate_window: the rate limit's window in seconds. The connection it suggests says both, so
        edits pace their creates to this emulator's limit.
    :param callback_key: the key the emulator signs callbacks with, also put in the connection's
        ``webhook_secret`` so the receiver checks it; ``None`` sends them unsigned.
    :param extra_args: more command-line flags, e.g. ``["--fault", "recordInfo:slow=0.1"]``.
    """

    api_key = "system-test-key"

    def __init__(
        self,
        workdir: Path,
        *,
        latency: tuple[float, float, float] = (1.0, 2.0, 3.0),
        rate_limit: int = 1000,
        rate_window: float = 10.0,
        callback_key: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.callback_key = callback_key
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self.port = free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}"
        self.log_dir = Path(workdir) / "logs"
        command = [
            sys.executable,
            "-m",
            "airflow_provider_qwen.emulator",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--api-key",
            self.api_key,
            "--latency",
            *(str(seconds) for seconds in latency),
            "--rate-limit",
            str(rate_limit),
            "--rate-window",
            str(rate_window),
            "--log-level",
            "warning",
            *(["--callback-key", callback_key] if callback_key else []),
            *extra_args,
        ]
        self._process = ManagedProcess(
            "emulator", command, env=environment_without_airflow(), log_path=self.log_dir / "emulator.log"
        )
        self._http = requests.Session()
        self._upload_base_path = "/file-upload"

    @property
    def pid(self) -> int:
        return self._process.pid

    def __enter__(self) -> EmulatorProcess:
        try:
            self._process.start()
            wait_for(self._healthy, timeout=30, what="the emulator to answer /_emulator/health")
            self._upload_base_path = self._admin("GET", "config")["upload_base_path"]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if exc_type is not None:
            print(self.log_tails(), file=sys.stderr)
        self.close()

    def close(self) -> None:
        """Stop the emulator process and wait until its port is free."""
        self._http.close()
        self._process.stop(grace=5)
        wait_for(lambda: not is_listening(self.port), timeout=10, what=f"port {self.port} to be free")

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``: requests, statuses, ``accepted_create_tasks``, ``slowed``, tasks by state."""
        return self._admin("GET", "stats")

    def tasks(self) -> list[dict[str, Any]]:
        """``GET /_emulator/tasks``: every accepted task, oldest first, with the createTask body it was sent."""
        return self._admin("GET", "tasks")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """``POST /_emulator/config``: the fields given replace the current settings (``faults`` as a whole)."""
        return self._admin("POST", "config", json=changes)

    def record(self, apikley_task_id: str) -> dict[str, Any]:
        """A task's record, as ``recordInfo`` answers it."""
        answer = self._http.get(
            f"{self.base_url}/api/v1/jobs/recordInfo",
            params={"taskId": apikley_task_id},
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()["data"]

    def reset(self) -> dict[str, Any]:
        """``POST /_emulator/reset``: forget tasks, files and statistics."""
        return self._admin("POST", "reset")

    def airflow_connection(self) -> str:
        """An ``apikley`` connection to this emulator, as JSON for ``AIRFLOW_CONN_APIKLEY_DEFAULT``."""
        return json.dumps(
            {
                "conn_type": "apikley",
                "host": self.base_url,
                "password": self.api_key,
                "extra": {
                    "upload_base_url": f"{self.base_url}{self._upload_base_path}",
                    # the emulator's limit, so edits pace their creates to it, not to Apikley's default
                    "creates_per_window": self.rate_limit,
                    "window_seconds": self.rate_window,
                    **({"webhook_secret": self.callback_key} if self.callback_key else {}),
                },
            }
        )

    def log_tails(self, lines: int = 40) -> str:
        return f"---- emulator ({self._process.log_path}) ----\n{self._process.log_tail(lines)}"

    def _healthy(self) -> bool:
        if not self._process.is_running():
            raise StopWaiting(f"the emulator exited with {self._process.returncode()}:\n{self._process.log_tail()}")
        return bool(self._admin("GET", "health")["ok"])

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, f"{self.base_url}/_emulator/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()


class AirflowDeployment:
    """
    PostgreSQL plus the scheduler, dag-processor, triggerer and api-server, each a separate process.

    Entering migrates a fresh database, starts every component and waits until the api-server
    reports them all healthy; leaving stops them (process and descendants), stops PostgreSQL,
    removes its cluster and waits until the ports are free.

    :param workdir: where ``airflow_home`` and ``log_dir`` are made.
    :param dags_folder: the DAGs to parse.
    :param parallelism: ``[core] parallelism``, the LocalExecutor's worker slots.
    :param env: added to every component's environment, e.g. ``AIRFLOW_CONN_APIKLEY_DEFAULT``.
    """

    def __init__(
        self, workdir: Path, dags_folder: Path, *, parallelism: int = 4, env: dict[str, str] | None = None
    ) -> None:
        workdir = Path(workdir)
        self.airflow_home = workdir / "airflow-home"
        self.log_dir = workdir / "logs"
        self.dags_folder = Path(dags_folder)
        self.parallelism = parallelism
        self.extra_env = dict(env or {})
        self.postgres = PostgresCluster(self.log_dir)
        self.settings = DeploymentSettings(
            airflow_home=self.airflow_home,
            dags_folder=self.dags_folder,
            database_url=self.postgres.sqlalchemy_url,
            api_port=free_port(),
            parallelism=parallelism,
            jwt_secret=new_jwt_secret(),
        )
        self.api_url = self.settings.api_url
        self.rest = AirflowRestClient(self.api_url)
        self._components: dict[str, ManagedProcess] = {}
        self._exit_stack = contextlib.ExitStack()

    # -- lifecycle

    def __enter__(self) -> AirflowDeployment:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._exit_stack.enter_context(self.postgres)
            self._exit_stack.callback(self._stop_components)
            self._migrate()
            self._start_components()
        except BaseException:
            print(self.log_tails(), file=sys.stderr)
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if exc_type is not None:
            print(self.log_tails(), file=sys.stderr)
        self.close()

    def close(self) -> None:
        """Stop every component, then PostgreSQL; wait until the deployment's ports are free."""
        self.rest.close()
        self._exit_stack.close()
        for port in self.ports():
            wait_for(lambda port=port: not is_listening(port), timeout=15, what=f"port {port} to be free")

    def ports(self) -> list[int]:
        """The loopback ports the deployment listens on."""
        return [self.settings.api_port, self.postgres.port]

    def _start_components(self) -> None:
        """Start the api-server, then the other components once it answers; wait until all are healthy."""
        self.start("api-server")
        wait_for(self._api_server_answers, timeout=START_TIMEOUT_SECONDS, what="the api-server to answer")
        for component in ("scheduler", "dag-processor", "triggerer"):
            self.start(component)
        self.wait_until_healthy()

    def _migrate(self) -> None:
        log_path = self.log_dir / "db-migrate.log"
        with log_path.open("ab") as log:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_SECONDS,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({result.returncode}):\n{tail(log_path)}")

    def _stop_components(self) -> None:
        """
        Stop the scheduler, dag-processor and triggerer together, then the api-server they talk to
        while they shut down; the api-server is stopped even when stopping the others fails.
        """
        others = [process for name, process in self._components.items() if name != "api-server"]
        try:
            stop_together(others)
        finally:
            if "api-server" in self._components:
                self._components["api-server"].stop()

    def _environment(self) -> dict[str, str]:
        return component_environment(self.settings, self.extra_env)

    # -- components

    def start(self, component: str) -> None:
        """(Re)start one component; it must not be running."""
        process = self._components.get(component)
        if process is None:
            process = self._new_component(component)
            self._components[component] = process
        process.start()

    def _new_component(self, component: str) -> ManagedProcess:
        """The process of one component, not started yet: its command, environment, log and directory."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; known: {list(COMPONENTS)}")
        command = [sys.executable, "-m", "airflow", *COMPONENTS[component]]
        if component == "api-server":
            command += ["--host", LOOPBACK, "--port", str(self.settings.api_port)]
        log_path = self.log_dir / f"{component}.log"
        return ManagedProcess(component, command, env=self._environment(), log_path=log_path, cwd=self.airflow_home)

    def _health_key(self, component: str) -> str | None:
        """The name ``/monitor/health`` reports the component under, if it reports on it."""
        return HEALTH_KEYS.get(component)

    def components(self) -> dict[str, ManagedProcess]:
        """Every component started so far, by name, in the order they were first started."""
        return dict(self._components)

    def process(self, component: str) -> psutil.Process:
        """The component's main process (its descendants are ``process(...).children(recursive=True)``)."""
        return self._component(component).process()

    def kill(self, component: str, sig: int = signal.SIGKILL) -> None:
        """
        Send ``sig`` to the component and every process it started, as when its container dies.

        With SIGKILL this returns once all of them are gone.
        """
        self._component(component).kill(sig)

    def task_process(self, task_instance_id: str, timeout: float = 30.0) -> psutil.Process:
        """
        The process running a task instance's try.

        The scheduler's LocalExecutor runs each try in a worker process (forked from its fork server)
        titled ``airflow worker -- LocalExecutor: <task instance id>``, which supervises the try in a
        child process titled ``airflow worker -- <task instance id>``: that child is returned.

        :raises TimeoutError: when no such process shows up within ``timeout`` seconds.
        """
        title = f"airflow worker -- {task_instance_id}"

        def find() -> psutil.Process | None:
            for proc in self._component("scheduler").members():
                with contextlib.suppress(psutil.Error):
                    if " ".join(proc.cmdline()).strip() == title:
                        return proc
            return None

        return wait_for(find, timeout=timeout, what=f"a process titled {title!r}", interval=0.2)

    def wait_until_healthy(self, components: tuple[str, ...] = tuple(HEALTH_KEYS), timeout: float = 120.0) -> None:
        """Wait until ``/monitor/health`` calls the metadatabase and each of ``components`` healthy."""

        def healthy() -> bool:
            for component in components:
                if not self._component(component).is_running():
                    raise StopWaiting(f"{component} exited with {self._component(component).returncode()}")
            health = self.rest.health()
            keys = {key for component in components if (key := self._health_key(component))}
            statuses = [health["metadatabase"]] + [health[key] for key in sorted(keys)]
            return all(status and status.get("status") == "healthy" for status in statuses)

        wait_for(healthy, timeout=timeout, what=f"{', '.join(components)} to be healthy", interval=1.0)

    def _api_server_answers(self) -> bool:
        api_server = self._component("api-server")
        if not api_server.is_running():
            raise StopWaiting(f"the api-server exited with {api_server.returncode()}")
        return bool(self.rest.health())

    def _component(self, component: str) -> ManagedProcess:
        try:
            return self._components[component]
        except KeyError:
            raise ValueError(f"{component!r} was never started; components: {list(COMPONENTS)}") from None

    # -- DAG runs

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Wait until the DAG is parsed, unpause it and start a manual run; return the run id."""
        wait_for(lambda: self.rest.dag(dag_id), timeout=PARSE_TIMEOUT_SECONDS, what=f"DAG {dag_id} to be parsed")
        self.rest.set_paused(dag_id, False)
        return self.rest.trigger_dag_run(dag_id, conf or {})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """
        Wait until the run ends; return its state, ``"success"`` or ``"failed"``.

        :raises TimeoutError: when it is still going after ``timeout`` seconds.
        """
        return wait_for(
            lambda: (state := self.rest.dag_run(dag_id, run_id)["state"]) in FINAL_RUN_STATES and state,
            timeout=timeout,
            what=f"run {run_id} of {dag_id} to end",
            interval=2.0,
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances as the REST API shows them (``state``, ``try_number``, ``map_index``...)."""
        return self.rest.task_instances(dag_id, run_id)

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on the metadata database (committed); the rows it returns, if any."""
        import psycopg2

        with (
            contextlib.closing(psycopg2.connect(**self.postgres.connect_kwargs(), connect_timeout=10)) as connection,
            connection,  # commits on success, rolls back on error
            connection.cursor() as cursor,
        ):
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []

    # -- diagnosis

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each component's log, and PostgreSQL's, for a reader of a failed run."""
        logs = [self.log_dir / "db-migrate.log"]
        logs += [process.log_path for process in self._components.values()]
        logs.append(self.postgres.server_log if self.postgres.root else self.log_dir / "postgres.log")
        return "\n".join(f"---- {path} ----\n{tail(path, lines)}" for path in logs if path.exists())
