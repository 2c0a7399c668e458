"""Running the emulator from a background thread, for tests and demos."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import uvicorn

from airflow_provider_qwen.emulator.app import create_app
from airflow_provider_qwen.emulator.script import ScriptedAnswer, SeenRequest
from airflow_provider_qwen.emulator.settings import ENDPOINTS, EmulatorSettings
from airflow_provider_qwen.emulator.state import EmulatorState
from airflow_provider_qwen.emulator.store import Task

START_TIMEOUT_SECONDS = 10.0


@dataclass
class RunningEmulator:
    """
    A started emulator: where it listens, and its memory.

    ``state`` is live: tests may read its ``stats``, ``tasks``, ``accepted_creates`` and ``credits``,
    and change its ``settings`` or ``credits`` while it runs.
    """

    base_url: str
    state: EmulatorState
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @property
    def upload_base_url(self) -> str:
        """Base URL of the upload API, e.g. ``http://127.0.0.1:8765/file-upload``."""
        return f"{self.base_url}{self.state.settings.upload_base_path}"

    @property
    def api_key(self) -> str:
        """The first accepted API key."""
        return self.state.settings.api_keys[0]

    def configure(self, **changes: Any) -> EmulatorSettings:
        """Change settings from now on, as ``POST /_emulator/config`` does; ``faults`` is replaced as a whole."""
        self.state.settings = EmulatorSettings.model_validate({**self.state.settings.model_dump(), **changes})
        return self.state.settings

    def put_file(self, path: str, content: bytes, mime_type: str = "image/png") -> str:
        """Serve ``content`` as if it had been uploaded under ``path``; return its URL."""
        self.state.files.put(f"files/{path}", content, mime_type, self.state.settings.file_ttl)
        return f"{self.base_url}/files/{quote(path)}"

    def wait_until_ended(self, task_id: str, timeout: float = 10.0) -> Task:
        """
        Block until the emulator has ended ``task_id`` (without asking it over HTTP); return the task.

        :raises TimeoutError: when it is still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while (task := self.state.tasks[task_id]).completed is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulated task {task_id} did not end within {timeout} s")
            time.sleep(0.01)
        return task

    def script(self, endpoint: str, *answers: ScriptedAnswer) -> None:
        """
        Give the next requests to ``endpoint`` these exact answers, in order (see :mod:`~.script`).

        :param endpoint: an endpoint name: ``createTask``, ``recordInfo``, ``upload``, ``credit``,
            ``download-url``, ``results`` or ``files``.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {list(ENDPOINTS)}")
        self.state.script.add(endpoint, answers)

    def seen(self, endpoint: str | None = None) -> list[SeenRequest]:
        """Return the requests received since the last reset, oldest first; only ``endpoint``'s when given."""
        return self.state.script.seen(endpoint)

    def stats(self) -> dict[str, Any]:
        """Return what ``GET /_emulator/stats`` answers."""
        return self.state.summary()

    def reset(self) -> None:
        """Forget tasks, files and statistics, and restore the credits; tasks still running are cancelled."""
        if self.loop is None:
            self.state.reset()
            return
        # running tasks are cancelled, which only the server's own thread may do
        asyncio.run_coroutine_threadsafe(_call(self.state.reset), self.loop).result(timeout=5)

    def airflow_connection(self, api_key: str | None = None) -> str:
        """
        Return an ``apikley`` connection pointing at this emulator, as JSON for ``AIRFLOW_CONN_APIKLEY_DEFAULT``.

        Its create rate is the emulator's, as its settings say now, so edits pace their creates to it.
        """
        settings = self.state.settings
        extra = {
            "upload_base_url": self.upload_base_url,
            "creates_per_window": settings.create_rate_limit,
            "window_seconds": settings.create_rate_window,
        }
        return json.dumps(
            {"conn_type": "apikley", "host": self.base_url, "password": api_key or self.api_key, "extra": extra}
        )


async def _call(function: Any) -> Any:
    return function()


class _Server(uvicorn.Server):
    """A uvicorn server that remembers its event loop, so other threads can hand it work."""

    loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)


@contextmanager
def run_emulator(
    settings: EmulatorSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> Iterator[RunningEmulator]:
    """
    Serve an emulator from a background thread until the ``with`` block ends.

    >>> with run_emulator(EmulatorSettings(latency=(0.05, 0.05, 0.1))) as emulator:
    ...     emulator.base_url  # doctest: +SKIP
    'http://127.0.0.1:40123'

    :param settings: what the emulator does; defaults to :class:`EmulatorSettings`'s defaults.
    :param host: address to bind; loopback unless you mean to share it.
    :param port: port to bind; 0 picks a free one.
    :param log_level: uvicorn's log level.
    :raises RuntimeError: when the server does not start (e.g. the port is taken).
    """
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off", timeout_graceful_shutdown=2)
    server = _Server(config)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as err:  # uvicorn exits (SystemExit) when it cannot bind
            failure.append(err)

    thread = threading.Thread(target=serve, name=f"apikley-emulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            reason = f": {failure[0]!r}" if failure else ""
            raise RuntimeError(f"the Apikley emulator did not start on {host}:{port}{reason}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    url_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url_host = f"[{url_host}]" if ":" in url_host else url_host
    running = RunningEmulator(f"http://{url_host}:{bound_port}", app.state, server.loop)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=10)
