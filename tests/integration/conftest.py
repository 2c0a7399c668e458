"""Real Airflow, in-process: a migrated metadata database in the tests' AIRFLOW_HOME."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

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


@pytest.fixture
def provider_app_url(airflow_db, monkeypatch) -> Iterator[str]:
    """The provider's app on loopback under ``/apikley``, as the api-server mounts it, and ``[api] base_url`` on it."""
    import uvicorn
    from fastapi import FastAPI

    from airflow_provider_qwen.api_server.app import create_app

    server_app = FastAPI()
    server_app.mount("/apikley", create_app())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(server_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
