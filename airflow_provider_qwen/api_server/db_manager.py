"""
The callback receiver's, the run budgets' and the create pace's tables, managed by Airflow's own database commands.

``airflow db migrate`` creates them, ``airflow db reset`` drops them, and ``airflow db-manager
downgrade`` steps their migrations back, through this manager: Airflow 3.2+ finds it in the
provider info for ``airflow db migrate`` and ``airflow db reset``; Airflow 3.1, and the
``airflow db-manager`` commands on every version, need it listed in ``[database]
external_db_managers``.
"""

from __future__ import annotations

from pathlib import Path

from airflow.utils.db_manager import BaseDBManager

from airflow_provider_qwen import __version__
from airflow_provider_qwen.api_server import budget_ledger, create_pace_ledger  # noqa: F401 (their tables join the metadata)
from airflow_provider_qwen.api_server.deliveries import metadata

MIGRATIONS = Path(__file__).parent / "migrations"


class ApikleyDBManager(BaseDBManager):
    """Migrations of the callback receiver's tables, the run budgets' ledger and the create pace (``apikley_*``)."""

    metadata = metadata
    version_table_name = "apikley_alembic_version"
    migration_dir = str(MIGRATIONS)
    alembic_file = str(MIGRATIONS / "alembic.ini")
    supports_table_dropping = True
    revision_heads_map = {__version__: "a1c3e5f70005"}

    def downgrade(self, to_revision: str, from_revision: str | None = None, show_sql_only: bool = False) -> None:
        """
        Step the tables' migrations back to ``to_revision``; ``base`` drops the tables.

        :param to_revision: the revision to end at.
        :param from_revision: with ``show_sql_only``, the revision the SQL starts from; the
            database's current one by default.
        :param show_sql_only: print the SQL that would run, and change nothing.
        :raises ValueError: when ``from_revision`` is given without ``show_sql_only``, or the SQL is
            asked for and neither ``from_revision`` nor the database names a revision to start from.
        """
        from alembic import command

        if from_revision and not show_sql_only:
            raise ValueError(
                f"from_revision={from_revision!r} is only for show_sql_only: a database starts where it is"
            )
        config = self.get_alembic_config()
        if not show_sql_only:
            command.downgrade(config, revision=to_revision)
            return
        from_revision = from_revision or self.get_current_revision()
        if from_revision is None:
            raise ValueError(
                f"the database records no revision in {self.version_table_name}: give from_revision to print the SQL"
            )
        command.downgrade(config, revision=f"{from_revision}:{to_revision}", sql=True)
