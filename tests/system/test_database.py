"""
The callback receiver's tables on PostgreSQL, managed by Airflow's own database commands.

The deployment's ``airflow db migrate`` created them in its database; a second, fresh database on
the same server takes ``airflow db migrate`` then ``airflow db reset``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psycopg2
import pytest
from alembic.script import ScriptDirectory

from airflow_provider_qwen.api_server.db_manager import ApikleyDBManager
from tests.system.airflow_env import component_environment
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
    ApikleyDBManager.version_table_name,
}
FRESH_DATABASE = "fresh_metadata"
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


def airflow_db(deployment: AirflowDeployment, url: str, *arguments: str) -> None:
    environment = component_environment(
        deployment.settings, {**deployment.extra_env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
    )
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


def test_airflow_db_migrate_creates_the_receivers_tables_and_db_reset_drops_them(deployment: AirflowDeployment):
    postgres = deployment.postgres
    assert provider_tables(postgres.connect_kwargs()) == (TABLES, head_revision())

    with contextlib.closing(psycopg2.connect(**postgres.connect_kwargs(), connect_timeout=10)) as connection:
        connection.autocommit = True  # CREATE DATABASE runs outside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {FRESH_DATABASE}")
            cursor.execute(f"CREATE DATABASE {FRESH_DATABASE}")
    fresh = {**postgres.connect_kwargs(), "dbname": FRESH_DATABASE}
    fresh_url = postgres.sqlalchemy_url.rsplit("/", 1)[0] + f"/{FRESH_DATABASE}"

    airflow_db(deployment, fresh_url, "migrate")
    assert provider_tables(fresh) == (TABLES, head_revision())
    airflow_db(deployment, fresh_url, "reset", "--yes", "--skip-init")
    assert provider_tables(fresh) == (set(), None)
