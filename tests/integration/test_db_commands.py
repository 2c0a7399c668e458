"""
Airflow's own database commands manage the provider's tables on PostgreSQL: ``airflow db migrate``
creates them at the head revision, ``airflow db reset`` drops them, as on a deployment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.airflow_env import DeploymentSettings, new_jwt_secret
from tests.system.postgres import PostgresCluster
from tests.system.test_database import TABLES, airflow_db, head_revision, provider_tables

pytestmark = pytest.mark.integration


def test_airflow_db_migrate_creates_the_providers_tables_and_db_reset_drops_them(tmp_path: Path):
    settings = DeploymentSettings(
        airflow_home=tmp_path / "airflow-home",
        dags_folder=tmp_path / "dags",
        database_url="",  # each command names its database
        api_port=0,
        parallelism=1,
        jwt_secret=new_jwt_secret(),
    )
    with PostgresCluster(tmp_path / "logs") as postgres:
        airflow_db(settings, postgres.sqlalchemy_url, "migrate")
        assert provider_tables(postgres.connect_kwargs()) == (TABLES, head_revision())
        airflow_db(settings, postgres.sqlalchemy_url, "reset", "--yes", "--skip-init")
        assert provider_tables(postgres.connect_kwargs()) == (set(), None)
