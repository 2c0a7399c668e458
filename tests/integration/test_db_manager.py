"""
The callback receiver's tables through Airflow's own commands, on a fresh SQLite database: migrate,
step back with ``airflow db-manager downgrade``, migrate again (tests/system/test_database.py does
migrate and reset on PostgreSQL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwen.api_server.db_manager import ApikleyDBManager

pytestmark = pytest.mark.integration

MANAGER = f"{ApikleyDBManager.__module__}.{ApikleyDBManager.__name__}"
HEAD, DELIVERIES, LEDGER, SECOND, FIRST = (
    "a1c3e5f70005",
    "a1c3e5f70004",
    "a1c3e5f70003",
    "a1c3e5f70002",
    "a1c3e5f70001",
)
#: The callback receiver's tables, which the first revision made, the run budgets' ledger, the
#: delivered tasks' records and the create pace.
FIRST_TABLES = ["apikley_alembic_version", "apikley_callback_signature", "apikley_recorded_task"]
LEDGER_TABLES = ["apikley_budget", "apikley_budget_reservation", "apikley_budget_task", "apikley_model_cost"]
PACE_TABLES = ["apikley_create_pace", "apikley_create_slot"]
TABLES = sorted([*FIRST_TABLES, *LEDGER_TABLES, "apikley_delivered_task", *PACE_TABLES])
CLAIM = (1, "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e", "2026-12-06 10:00:00.000000")

#: Runs each step in one process (Airflow's imports cost seconds), printing after each the SQL
#: Alembic wrote, if any, then a line with what the database holds.
RUN_STEPS = """
import json, sqlite3, sys
from airflow.cli import cli_parser

database, steps = sys.argv[1], json.loads(sys.argv[2])

def state():
    with sqlite3.connect(database) as db:
        tables = sorted(name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'apikley%'"))
        versions = [v for (v,) in db.execute("SELECT version_num FROM apikley_alembic_version")]
        columns = db.execute("PRAGMA table_info(apikley_recorded_task)").fetchall()
        indexes = db.execute("PRAGMA index_list(apikley_recorded_task)").fetchall()
        claims = db.execute("SELECT * FROM apikley_recorded_task").fetchall() if columns else None
        pace = [db.execute(f"PRAGMA {pragma}({table})").fetchall()
                for table in ("apikley_create_pace", "apikley_create_slot") for pragma in ("table_info", "index_list")]
    return {"tables": tables, "versions": versions, "columns": columns, "indexes": indexes, "claims": claims,
            "pace": pace}

for step in steps:
    if step[0] == "sql":
        with sqlite3.connect(database) as db:
            db.execute(step[1], step[2])
    else:
        arguments = cli_parser.get_parser().parse_args(step)
        arguments.func(arguments)
    print("STATE " + json.dumps(state()), flush=True)
"""


def run_steps(home: Path, *steps: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Run ``steps`` (``airflow`` arguments, or ``["sql", statement, parameters]``); return each one's output, state."""
    database = home / "airflow.db"
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
        "AIRFLOW__DATABASE__EXTERNAL_DB_MANAGERS": MANAGER,
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN_STEPS, str(database), json.dumps(steps)],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outputs, lines = [], []
    for line in result.stdout.splitlines():
        if line.startswith("STATE "):
            outputs.append(("\n".join(lines), json.loads(line.removeprefix("STATE "))))
            lines = []
        else:
            lines.append(line)
    assert len(outputs) == len(steps)
    return outputs


def declared_type(state: dict[str, Any], column: str) -> str:
    (declared,) = [kind for _, name, kind, *_ in state["columns"] if name == column]
    return declared


def test_migrate_downgrade_and_migrate_again_on_sqlite(tmp_path):
    migrate = ["db", "migrate"]
    downgrade = ["db-manager", "downgrade", MANAGER, "-y", "--to-revision"]
    show_downgrade = ["db-manager", "downgrade", MANAGER, "--show-sql-only", "--to-revision", FIRST]
    claim = ["sql", "INSERT INTO apikley_recorded_task VALUES (?, ?, ?)", list(CLAIM)]
    (
        (_, created),  # a fresh database: the tables come from the ORM, stamped at the head
        (_, claimed),
        (_, stepped_back),
        (_, migrated),  # the migrations this time
        (sql, shown),
        (_, dropped),
        (_, created_again),
    ) = run_steps(tmp_path, migrate, claim, [*downgrade, FIRST], migrate, show_downgrade, [*downgrade, "base"], migrate)
    assert (created["tables"], created["versions"], declared_type(created, "recorded_at")) == (
        TABLES,
        [HEAD],
        "TIMESTAMP",  # UtcDateTime, as Airflow's own times
    )
    assert claimed["claims"] == [list(CLAIM)]

    assert (stepped_back["versions"], declared_type(stepped_back, "recorded_at")) == ([FIRST], "DATETIME")
    assert stepped_back["tables"] == FIRST_TABLES  # the later tables are gone
    assert stepped_back["claims"] == [list(CLAIM)]  # the table was copied, not emptied
    assert stepped_back["indexes"] == created["indexes"]

    assert migrated["versions"] == [HEAD]
    assert (migrated["columns"], migrated["indexes"]) == (created["columns"], created["indexes"])
    assert migrated["pace"] == created["pace"]  # the migration makes the create pace's tables as the ORM does
    assert migrated["claims"] == [list(CLAIM)]

    assert f"Running downgrade {HEAD} -> {DELIVERIES}" in sql and "DROP TABLE apikley_create_pace" in sql
    assert f"Running downgrade {DELIVERIES} -> {LEDGER}" in sql and "DROP TABLE apikley_delivered_task" in sql
    assert f"Running downgrade {LEDGER} -> {SECOND}" in sql and "DROP TABLE apikley_budget" in sql
    assert f"Running downgrade {SECOND} -> {FIRST}" in sql and "recorded_at DATETIME NOT NULL" in sql
    assert shown == migrated  # only shown

    assert (dropped["tables"], dropped["versions"], dropped["claims"]) == (["apikley_alembic_version"], [], None)
    assert (created_again["tables"], created_again["versions"]) == (TABLES, [HEAD])


def test_downgrade_refuses_a_start_it_cannot_take_before_running_anything():
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    with Session(create_engine("sqlite://")) as never_migrated:
        manager = ApikleyDBManager(never_migrated)
        with pytest.raises(ValueError, match=f"from_revision='{HEAD}' is only for show_sql_only"):
            manager.downgrade(FIRST, from_revision=HEAD)
        with pytest.raises(ValueError, match="records no revision in apikley_alembic_version: give from_revision"):
            manager.downgrade(FIRST, show_sql_only=True)
