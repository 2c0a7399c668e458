"""The environment every component of the system-test deployment runs with: one configuration, all in variables."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from tests.system.ports import LOOPBACK

#: ``[triggerer] triggerer_health_check_threshold``: a killed triggerer's triggers move to a live one after 15 s.
TRIGGERER_HEALTH_CHECK_SECONDS = 15
#: The provider's DB manager, as docs/security.md tells a user of Airflow 3.1 to list it before migrating.
DB_MANAGER = "airflow_provider_qwen.api_server.db_manager.ApikleyDBManager"

#: What the LocalExecutor's fork server imports once, so that each task try, forked from it, does not
#: import Airflow's task runner and the provider again: on two busy cores that is seconds of every try.
EXECUTOR_PRELOAD_MODULES = (
    "airflow",
    "airflow.executors.local_executor",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "airflow.dag_processing.bundles.local",
    "airflow.providers.standard.decorators.python",
    "airflow_provider_qwen.operators.qwen",
    # the OpenLineage listener every task process loads as a plugin (seconds to import)
    "airflow.providers.openlineage.plugins.openlineage",
)


@dataclass(frozen=True)
class DeploymentSettings:
    """
    What differs from one deployment to the next.

    :param airflow_home: ``AIRFLOW_HOME`` (task logs go to ``<airflow_home>/logs``).
    :param dags_folder: the DAGs the dag-processor parses.
    :param database_url: ``[database] sql_alchemy_conn``.
    :param api_port: the api-server's port on 127.0.0.1.
    :param parallelism: ``[core] parallelism``: how many tasks the LocalExecutor runs at once.
    :param jwt_secret: ``[api_auth] jwt_secret``, the same in every component.
    """

    airflow_home: Path
    dags_folder: Path
    database_url: str
    api_port: int
    parallelism: int
    jwt_secret: str

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"


def new_jwt_secret() -> str:
    """A random secret for signing the deployment's JWTs, 64 bytes at least as HS512 wants."""
    return secrets.token_urlsafe(64)


def airflow_config(settings: DeploymentSettings) -> dict[str, str]:
    """The Airflow configuration, as ``AIRFLOW__SECTION__KEY`` variables."""
    config = {
        "core": {
            "dags_folder": settings.dags_folder,
            "executor": "LocalExecutor",
            "parallelism": settings.parallelism,
            "load_examples": False,
            # The REST API answers anyone as admin: the deployment listens on loopback only.
            "simple_auth_manager_all_admins": True,
            # Task processes reach the metadata database only through the api-server.
            "execution_api_server_url": f"{settings.api_url}/execution/",
            "mp_forkserver_preload": ",".join(EXECUTOR_PRELOAD_MODULES),
            # the connection form's "Test" button
            "test_connection": "Enabled",
        },
        "database": {"sql_alchemy_conn": settings.database_url, **db_manager_config()},
        "api": {"host": LOOPBACK, "port": settings.api_port, "base_url": settings.api_url, "workers": 1},
        "api_auth": {"jwt_secret": settings.jwt_secret},
        # New DAG files are found within seconds instead of the default five minutes.
        "dag_processor": {"refresh_interval": 5, "min_file_process_interval": 30},
        # A killed triggerer's triggers move to a live one after 15 s instead of 30 s.
        "triggerer": {"job_heartbeat_sec": 2, "triggerer_health_check_threshold": TRIGGERER_HEALTH_CHECK_SECONDS},
        # Executor workers come from a fork server holding EXECUTOR_PRELOAD_MODULES, not from the scheduler.
        "scheduler": {"job_heartbeat_sec": 2, "scheduler_heartbeat_sec": 2, "mp_start_method": "forkserver"},
        "logging": {"logging_level": "INFO"},
        # the dev extra installs the OpenLineage provider; a deployment collects lineage only where it
        # asks for it (see openlineage_config)
        "openlineage": {"disabled": True},
    }
    return config_variables(config)


def db_manager_config() -> dict[str, str]:
    """
    ``[database] external_db_managers`` where this Airflow needs the provider's DB manager listed (3.1).

    From 3.2 the provider info names it, and the deployment leaves the option unset to prove that is enough.
    """
    from importlib.metadata import version

    from packaging.version import Version

    return {"external_db_managers": DB_MANAGER} if Version(version("apache-airflow")) < Version("3.2") else {}


def openlineage_events(airflow_home: Path) -> Path:
    """Where a deployment's OpenLineage events go: one ``<this>-<time>.json`` file each."""
    return airflow_home / "openlineage-event"


def openlineage_config(airflow_home: Path) -> dict[str, str]:
    """
    Variables that send OpenLineage events to files, from the tasks that enable lineage only
    (``selective_enable``): for a deployment's ``env``. The benchmarks' deployments leave it off.
    """
    transport = {"type": "file", "log_file_path": str(openlineage_events(airflow_home))}
    return config_variables(
        {"openlineage": {"disabled": False, "transport": json.dumps(transport), "selective_enable": True}}
    )


def config_variables(config: dict[str, dict[str, object]]) -> dict[str, str]:
    """Airflow options by section and key, as ``AIRFLOW__SECTION__KEY`` variables."""
    return {
        f"AIRFLOW__{section.upper()}__{key.upper()}": _config_value(value)
        for section, options in config.items()
        for key, value in options.items()
    }


def _config_value(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def environment_without_airflow() -> dict[str, str]:
    """This process's environment less every ``AIRFLOW*`` and ``_AIRFLOW*`` variable."""
    return {key: value for key, value in os.environ.items() if not key.upper().startswith(("AIRFLOW", "_AIRFLOW"))}


def component_environment(settings: DeploymentSettings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """
    The whole environment of an Airflow component.

    Nothing Airflow-specific is inherited from the calling process (a test run sets its own
    ``AIRFLOW_HOME`` and test-mode options); ``extra`` (connections, for instance) is added last.
    """
    return {
        **environment_without_airflow(),
        "AIRFLOW_HOME": str(settings.airflow_home),
        **airflow_config(settings),
        **(extra or {}),
    }
