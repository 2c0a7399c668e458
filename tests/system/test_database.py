"""
The callback receiver's tables on PostgreSQL, managed by Airflow's own database commands.

The deployment's ``airflow db migrate`` created them in its database. Migrating and resetting a
fresh database on a PostgreSQL of its own is the integration tier's (``test_db_commands.py``), so
it runs beside the deployment's tests rather than after them.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psycopg2
import pytest
from alembic.script import ScriptDirectory

from airflow_provider_qwen.api_server.db_manager import ApikleyDBManager
from tests.system.airflow_env import DeploymentSettings, component_environment
from tests.system.deployment import AirflowDeployment

pytestmark = [
    pytest.mark.system,
]

#: The callback receiver's tables, the run budgets' ledger, and the provider's Alembic version table.
TABLES = {
    "apikley_callback_signature",
    "apikley_recorded_task",
    "apikley_budget",
    "apikley_budget_reservation",
    "apikley_budget_task",
    "apikley_model_cost",
    "apikley_delivered_task",
    "apikley_create_pace",
    "apikley_create_slot",
    ApikleyDBManager.version_table_name,
}
COMMAND_TIMEOUT_SECONDS = 180


def head_revision() -> str:
    (head,) = ScriptDirectory(ApikleyDBManager.migration_dir).get_heads()
    return head


def provider_tables(connect_kwargs: dict[str, object]) -> tuple[set[str], str | None]:
    """The provider's tables in one database, and the revision its version table records."""
    connection = psycopg2.connect(**connect_kwargs, connect_timeout=10)
    with contextlib.closing(connection), connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'apikley%%'")
        tables = {name for (name,) in cursor.fetchall()}
        revision = None
        if ApikleyDBManager.version_table_name in tables:
            cursor.execute(f"SELECT version_num FROM {ApikleyDBManager.version_table_name}")
            (revision,) = cursor.fetchone()
    return tables, revision


def airflow_db(settings: DeploymentSettings, url: str, *arguments: str) -> None:
    """Run ``airflow db <arguments>`` on the database at ``url``, as a deployment's components would."""
    environment = component_environment(settings, {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", *arguments],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"airflow db {' '.join(arguments)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


def test_the_deployments_airflow_db_migrate_created_the_providers_tables(deployment: AirflowDeployment):
    """``airflow db reset`` on a fresh database of its own is in tests/integration/test_db_commands.py."""
    assert provider_tables(deployment.postgres.connect_kwargs()) == (TABLES, head_revision())
