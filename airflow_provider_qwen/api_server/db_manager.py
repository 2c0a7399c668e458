"""
The callback receiver's tables, managed by Airflow's own database commands.

``airflow db migrate`` creates them, ``airflow db reset`` drops them, and ``airflow db-manager
downgrade`` (Airflow 3.2+) steps their migrations back, through this manager: Airflow 3.2+ finds it
in the provider info; Airflow 3.1 needs it listed in ``[database] external_db_managers``.
"""

from __future__ import annotations

from pathlib import Path

from airflow.utils.db_manager import BaseDBManager

from airflow_provider_qwen import __version__
from airflow_provider_qwen.api_server.deliveries import metadata

MIGRATIONS = Path(__file__).parent / "migrations"


class ApikleyDBManager(BaseDBManager):
    """Migrations of ``apikley_callback_signature`` and ``apikley_recorded_task``."""

    metadata = metadata
    version_table_name = "apikley_alembic_version"
    migration_dir = str(MIGRATIONS)
    alembic_file = str(MIGRATIONS / "alembic.ini")
    supports_table_dropping = True
    revision_heads_map = {__version__: "a1c3e5f70001"}
