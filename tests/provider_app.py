"""The provider's api-server app served on loopback, as the api-server mounts it, for tasks to reach over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds the server may take to start.
START_TIMEOUT_SECONDS = 20.0


@contextmanager
def serving_provider_app() -> Iterator[str]:
    """Serve the provider's app under ``/apikley`` from a background thread; yield the base URL (``[api] base_url``)."""
    import uvicorn
    from fastapi import FastAPI

    from airflow_provider_qwen.api_server.app import create_app
    from airflow_provider_qwen.api_server.urls import API_SERVER_PREFIX

    server_app = FastAPI()
    server_app.mount(API_SERVER_PREFIX, create_app())
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
