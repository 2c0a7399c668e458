"""Real Airflow, in-process: a migrated metadata database in the tests' AIRFLOW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.provider_app import serving_provider_app


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the (SQLite) metadata database once per test session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture
def provider_app_url(airflow_db, monkeypatch) -> Iterator[str]:
    """The provider's app on loopback under ``/apikley``, as the api-server mounts it, and ``[api] base_url`` on it."""
    with serving_provider_app() as base_url:
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
        yield base_url
