"""
An Airflow cluster on this machine: CeleryExecutor, two workers, two triggerers, two api-servers behind a balancer.

:class:`AirflowCluster` is the single-node :class:`~tests.system.deployment.AirflowDeployment`
grown to the shape users run for whole catalogs: PostgreSQL (metadata and Celery results), Redis
(the Celery broker, Debian's ``redis-server`` on a free loopback port), one scheduler and one
dag-processor, and two of each of the others. Every component is a process of its own; the
workers and triggerers stand for machines of their own, each with its own ``AIRFLOW_HOME`` (task
and trigger logs), temporary directory, copy of the DAGs and hostname (``[core] hostname_callable``),
so nothing local is shared by accident. What they share is what a real cluster shares: the
database, the broker, the load balancer in front of the api-servers (``[api] base_url``, also the
workers' execution API) and the output folder a DAG names, standing for object storage.

Component output goes to ``<workdir>/logs/<component>.log``; task and trigger logs to each
machine's ``<workdir>/<component>/airflow-home/logs``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import requests

from tests.cluster.hostname import HOSTNAME_CALLABLE, HOSTNAME_VARIABLE
from tests.system.airflow_env import config_variables, environment_without_airflow
from tests.system.deployment import COMPONENTS, HEALTH_KEYS, START_TIMEOUT_SECONDS, AirflowDeployment
from tests.system.ports import LOOPBACK, free_port, is_listening
from tests.system.processes import ManagedProcess
from tests.system.rest_api import AirflowRestClient
from tests.system.waiting import StopWaiting, wait_for

__all__ = ["API_SERVERS", "TRIGGERERS", "WORKERS", "AirflowCluster"]

API_SERVERS = ("api-server-a", "api-server-b")
WORKERS = ("worker-a", "worker-b")
TRIGGERERS = ("triggerer-a", "triggerer-b")
#: The components on machines of their own: each has its own AIRFLOW_HOME, temporary directory and hostname.
OWN_MACHINES = WORKERS + TRIGGERERS

#: Seconds a task instance may go without a heartbeat before the scheduler fails it (default 300):
#: how long a killed worker's tasks wait before their retry.
TASK_HEARTBEAT_TIMEOUT_SECONDS = 20
#: The repository, for the components that import ``tests.cluster`` (the balancer, the hostname callable).
REPOSITORY = Path(__file__).resolve().parents[2]


class AirflowCluster(AirflowDeployment):
    """
    PostgreSQL, Redis, a load balancer and the Airflow components of a CeleryExecutor cluster, each a separate process.

    Entering migrates a fresh database, starts Redis and the balancer, both api-servers, then the
    scheduler, dag-processor, triggerers and workers, and waits until the api-servers report the
    components healthy and both workers are ready; leaving stops everything and waits until the
    ports are free.

    :param workdir: where the homes, logs and private directories are made.
    :param dags_folder: the DAGs, parsed by the dag-processor and copied to each worker.
    :param worker_concurrency: task processes each Celery worker runs at once.
    :param env: added to every component's environment, e.g. ``AIRFLOW_CONN_APIKLEY_DEFAULT``.
    """

    def __init__(
        self, workdir: Path, dags_folder: Path, *, worker_concurrency: int = 4, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(workdir, dags_folder, parallelism=worker_concurrency * len(WORKERS), env=env)
        self.workdir = Path(workdir)
        self.worker_concurrency = worker_concurrency
        self.api_ports = {API_SERVERS[0]: self.settings.api_port, API_SERVERS[1]: free_port()}
        self.redis_port = free_port()
        self.balancer_port = free_port()
        # Users, Apikley's callbacks and the workers' execution API all come in through the balancer.
        self.api_url = f"http://{LOOPBACK}:{self.balancer_port}"
        self.rest.close()
        self.rest = AirflowRestClient(self.api_url)
        self.extra_env.update(self._cluster_config())

    def _cluster_config(self) -> dict[str, str]:
        return config_variables(
            {
                "core": {
                    "executor": "CeleryExecutor",
                    "execution_api_server_url": f"{self.api_url}/execution/",
                },
                "api": {"base_url": self.api_url},
                "celery": {
                    "broker_url": f"redis://{LOOPBACK}:{self.redis_port}/0",
                    "result_backend": f"db+{self.postgres.sqlalchemy_url}",
                },
                "scheduler": {"task_instance_heartbeat_timeout": TASK_HEARTBEAT_TIMEOUT_SECONDS},
            }
        )

    # -- layout

    def home(self, component: str) -> Path:
        """The component's ``AIRFLOW_HOME``: its own on a machine of its own, the shared one otherwise."""
        return self.workdir / component / "airflow-home" if component in OWN_MACHINES else self.airflow_home

    def log_folders(self) -> list[Path]:
        """Every folder logs are written to: the components' output, and each home's task and trigger logs."""
        homes = {self.airflow_home, *(self.home(component) for component in OWN_MACHINES)}
        return [self.log_dir, *sorted(home / "logs" for home in homes)]

    def ports(self) -> list[int]:
        return [*super().ports(), self.api_ports[API_SERVERS[1]], self.redis_port, self.balancer_port]

    def _new_component(self, component: str) -> ManagedProcess:
        services = {"redis": self._redis, "balancer": self._balancer}
        if component in services:
            return services[component]()
        airflow = [sys.executable, "-m", "airflow"]
        if component in API_SERVERS:
            command = [*airflow, "api-server", "--host", LOOPBACK, "--port", str(self.api_ports[component])]
        elif component in WORKERS:
            command = [*airflow, "celery", "worker", "--celery-hostname", component, "--skip-serve-logs"]
            command += ["--concurrency", str(self.worker_concurrency), "--without-mingle", "--without-gossip"]
        elif self._kind(component) in ("scheduler", "dag-processor", "triggerer"):
            command = [*airflow, *COMPONENTS[self._kind(component)]]
        else:
            raise ValueError(f"unknown component {component!r}")
        env = self._environment()
        if component in OWN_MACHINES:
            env.update(self._own_machine(component))
        log_path = self.log_dir / f"{component}.log"
        return ManagedProcess(component, command, env=env, log_path=log_path, cwd=self.home(component))

    def _own_machine(self, component: str) -> dict[str, str]:
        """A worker's or triggerer's own home, temporary directory, hostname and (a worker's) copy of the DAGs."""
        root = self.workdir / component
        home, tmp = self.home(component), root / "tmp"
        for folder in (home, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        env = {
            "AIRFLOW_HOME": str(home),
            "TMPDIR": str(tmp),
            HOSTNAME_VARIABLE: component,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
            "PYTHONPATH": str(REPOSITORY),
        }
        if component in WORKERS:
            dags = root / "dags"
            shutil.copytree(self.dags_folder, dags, dirs_exist_ok=True)
            env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
        return env

    def _redis(self) -> ManagedProcess:
        folder = self.workdir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.redis_port), "--bind", LOOPBACK, "--save", "", "--appendonly"]
        command += ["no", "--dir", str(folder), "--loglevel", "warning"]
        return ManagedProcess(
            "redis", command, env=environment_without_airflow(), log_path=self.log_dir / "redis.log", cwd=folder
        )

    def _balancer(self) -> ManagedProcess:
        command = [sys.executable, "-m", "tests.cluster.balancer", "--port", str(self.balancer_port)]
        for name, port in self.api_ports.items():
            command += ["--backend", f"{name}={port}"]
        env = {**environment_without_airflow(), "PYTHONPATH": str(REPOSITORY)}
        return ManagedProcess("balancer", command, env=env, log_path=self.balancer_log, cwd=REPOSITORY)

    @property
    def balancer_log(self) -> Path:
        return self.log_dir / "balancer.log"

    @staticmethod
    def _kind(component: str) -> str:
        """``triggerer`` for ``triggerer-a``: the component's kind, without the machine's letter."""
        base, _, letter = component.rpartition("-")
        return base if len(letter) == 1 and base else component

    def _health_key(self, component: str) -> str | None:
        return HEALTH_KEYS.get(self._kind(component))

    # -- lifecycle

    def _start_components(self) -> None:
        for service, port in (("redis", self.redis_port), ("balancer", self.balancer_port)):
            self.start(service)
            wait_for(lambda port=port: is_listening(port), timeout=30, what=f"{service} on port {port}")
        for api_server in API_SERVERS:
            self.start(api_server)
        for api_server in API_SERVERS:
            self.wait_until_answering(api_server)
        for component in ("scheduler", "dag-processor", *TRIGGERERS, *WORKERS):
            self.start(component)
        self.wait_until_healthy(("scheduler", "dag-processor", *TRIGGERERS, *WORKERS))
        for worker in WORKERS:
            self.wait_until_worker_ready(worker)

    def wait_until_answering(self, api_server: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until one api-server, asked directly, answers ``/api/v2/monitor/health``."""
        url = f"http://{LOOPBACK}:{self.api_ports[api_server]}/api/v2/monitor/health"

        def answers() -> bool:
            if not self._component(api_server).is_running():
                raise StopWaiting(f"{api_server} exited with {self._component(api_server).returncode()}")
            return requests.get(url, timeout=10).ok

        wait_for(answers, timeout=timeout, what=f"{api_server} to answer")

    def wait_until_worker_ready(self, worker: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until the Celery worker says it is ready to take tasks (since its latest start)."""

        def ready() -> bool:
            if not self._component(worker).is_running():
                raise StopWaiting(f"{worker} exited with {self._component(worker).returncode()}")
            text = self._component(worker).log_path.read_text(errors="replace")
            return " ready." in text.rpartition("==== ")[2]

        wait_for(ready, timeout=timeout, what=f"Celery worker {worker} to be ready", interval=1.0)

    def restart(self, component: str) -> None:
        """Stop one component as its orchestrator would (SIGTERM, then SIGKILL after a grace), and start it again."""
        self._component(component).stop()
        self.start(component)

    def api_server_url(self, api_server: str) -> str:
        """One api-server's own URL, past the balancer."""
        return f"http://{LOOPBACK}:{self.api_ports[api_server]}"
