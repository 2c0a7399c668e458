"""Running the emulator: in a background thread for tests and demos, or in the foreground."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from airflow_provider_qwen.emulator.app import EmulatorState, create_app
from airflow_provider_qwen.emulator.settings import EmulatorSettings


@dataclass
class RunningEmulator:
    """A started emulator: where it listens, and its memory (settings, tasks, statistics)."""

    base_url: str
    state: EmulatorState

    def airflow_connection(self, api_key: str | None = None) -> str:
        """An ``apikley`` connection pointing at this emulator, for ``AIRFLOW_CONN_APIKLEY_DEFAULT``."""
        return json.dumps(
            {
                "conn_type": "apikley",
                "host": self.base_url,
                "password": api_key or self.state.settings.api_keys[0],
                "extra": {"upload_base_url": f"{self.base_url}{self.state.settings.upload_base_path}"},
            }
        )


@contextmanager
def run_emulator(
    settings: EmulatorSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningEmulator]:
    """
    Serve an emulator from a background thread until the ``with`` block ends.

    :param port: 0 picks a free port.
    """
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="apikley-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the Apikley emulator did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningEmulator(f"http://{host}:{bound_port}", app.emulator)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
