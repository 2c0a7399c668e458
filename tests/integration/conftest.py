"""Real Airflow, in-process: a migrated metadata database in the tests' AIRFLOW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the (SQLite) metadata database once per test session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the fault suite's table when it ran."""
    import sys

    suite = sys.modules.get("tests.integration.test_fault_suite")
    if suite is not None and suite.ROWS:
        terminalreporter.section("fault suite")
        for line in suite.fault_table():
            terminalreporter.write_line(line)
