"""Real Airflow, in-process, for the benchmark DAGs: the same migrated metadata database as the integration tests."""

from __future__ import annotations

# pytest finds a fixture by its name in a conftest module, so importing it is enough.
from tests.integration.conftest import airflow_db  # noqa: F401
