"""The provider's api-server app served on loopback, as the api-server mounts it, for tasks to reach over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

#: Seconds the server may take to start.
START_TIMEOUT_SECONDS = 20.0


def mounted_provider_app() -> FastAPI:
    """The provider's app mounted under ``/apikley``, as the api-server mounts it."""
    from fastapi import FastAPI

    from airflow_provider_qwen.api_server.app import create_app
    from airflow_provider_qwen.api_server.urls import API_SERVER_PREFIX

    server_app = FastAPI()
    server_app.mount(API_SERVER_PREFIX, create_app())
    return server_app


@contextmanager
def serving_provider_app() -> Iterator[str]:
    """Serve the provider's app under ``/apikley`` from a background thread; yield the base URL (``[api] base_url``)."""
    import uvicorn

    server_app = mounted_provider_app()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(server_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + START_TIMEOUT_SECONDS
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
