"""Alembic environment of the provider's tables, run by Airflow's database commands."""

from __future__ import annotations

import contextlib
from typing import Any

from alembic import context

from airflow import settings

from airflow_provider_qwen.api_server.db_manager import ApikleyDBManager

config = context.config
target_metadata = ApikleyDBManager.metadata
VERSION_TABLE = ApikleyDBManager.version_table_name


def include_object(_object: object, name: str | None, type_: str, *args: object) -> bool:
    """Compare only the provider's own tables, never Airflow's, in autogenerate."""
    return type_ != "table" or name in target_metadata.tables


#: What both modes configure: the provider's tables only, their versions in a table of their own.
SETTINGS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "render_as_batch": True,
    "include_object": include_object,
    "version_table": VERSION_TABLE,
}


def run_migrations_offline() -> None:
    """Write the migrations' SQL instead of running it (``--show-sql-only``)."""
    context.configure(url=settings.SQL_ALCHEMY_CONN, literal_binds=True, **SETTINGS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on Airflow's metadata database, each in its own transaction."""
    with contextlib.ExitStack() as stack:
        connection = config.attributes.get("connection")
        if connection is None:
            if settings.engine is None:
                raise RuntimeError("Airflow's database engine is not configured")
            connection = stack.enter_context(settings.engine.connect())
        context.configure(connection=connection, transaction_per_migration=True, **SETTINGS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
