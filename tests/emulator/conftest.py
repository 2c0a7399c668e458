"""A running emulator per test, and a small client that speaks Apikley's documented API to it."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from airflow_provider_qwen.emulator import EmulatorSettings, RunningEmulator, run_emulator
from tests.conftest import EMULATOR_KEY

KEY = EMULATOR_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "qwen/image-to-image"


def png(colour: str = "#c0392b", size: tuple[int, int] = (64, 48)) -> bytes:
    """A small solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def picture(size: tuple[int, int] = (96, 64), image_format: str = "PNG") -> bytes:
    """A small picture with edges and colours, so every effect changes it in its own way."""
    image = Image.new("RGB", size, "#2c7fb8")
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle((width // 8, height // 8, width // 2, height // 2), fill="#f1c40f")
    draw.ellipse((width // 2, height // 3, width - 4, height - 4), fill="#c0392b")
    draw.line((0, height - 1, width - 1, 0), fill="#ffffff", width=3)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


class Client:
    """Speaks to a running emulator the way Apikley's documentation says a client does."""

    def __init__(self, running: RunningEmulator) -> None:
        self.running = running
        self.url = running.base_url
        self.upload_url = f"{running.upload_base_url}/api"
        self.http = requests.Session()

    def upload(
        self, content: bytes = b"", name: str = "a.png", path: str = "tests", **kwargs: Any
    ) -> requests.Response:
        return self.http.post(
            f"{self.upload_url}/file-stream-upload",
            headers=kwargs.pop("headers", AUTH),
            files={"file": (name, content or png(), "image/png")},
            data={"uploadPath": path, **kwargs},
        )

    def image_url(self, content: bytes = b"", name: str = "a.png") -> str:
        return self.upload(content, name).json()["data"]["downloadUrl"]

    def create_body(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
        return self.http.post(
            f"{self.url}/api/v1/jobs/createTask", headers=AUTH if headers is None else headers, json=body
        )

    def create(self, headers: dict[str, str] | None = None, **input_fields: Any) -> requests.Response:
        body = {"model": MODEL, "input": {"prompt": "sepia", **input_fields}}
        if "image_url" not in body["input"]:
            body["input"]["image_url"] = self.image_url()
        return self.create_body(body, headers)

    def task_id(self, **input_fields: Any) -> str:
        answer = self.create(**input_fields).json()
        assert answer["code"] == 200, answer
        return answer["data"]["taskId"]

    def record(self, task_id: str | None) -> dict[str, Any]:
        params = {} if task_id is None else {"taskId": task_id}
        return self.http.get(f"{self.url}/api/v1/jobs/recordInfo", headers=AUTH, params=params).json()

    def states_until_ended(self, task_id: str) -> list[str]:
        """Every state the task is seen in, in order, asking as fast as it can until it ends."""
        seen: list[str] = []
        while not seen or seen[-1] not in ("success", "fail"):
            state = self.record(task_id)["data"]["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            time.sleep(0.005)
        return seen

    def wait(self, task_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.record(task_id)["data"]
            if data["state"] in ("success", "fail"):
                return data
            time.sleep(0.02)
        raise AssertionError(f"task {task_id} did not end in {timeout}s")

    def credit(self, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", AUTH)
        kwargs.setdefault("timeout", 5)
        return self.http.get(f"{self.url}/api/v1/chat/credit", **kwargs)

    def download_url(self, url: str) -> dict[str, Any]:
        return self.http.post(f"{self.url}/api/v1/common/download-url", headers=AUTH, json={"url": url}).json()

    def stats(self) -> dict[str, Any]:
        return self.http.get(f"{self.url}/_emulator/stats").json()

    def configure(self, **settings: Any) -> dict[str, Any]:
        answer = self.http.post(f"{self.url}/_emulator/config", json=settings)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def emulator_settings() -> EmulatorSettings:
    """Fast tasks (about 0.2 s each), one known key, repeatable draws."""
    return EmulatorSettings(api_keys=[KEY], latency=(0.05, 0.05, 0.1), random_seed=1)


@pytest.fixture
def emulator(emulator_settings: EmulatorSettings, shared_emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    """
    An emulator with ``emulator_settings`` and a clean memory, for this test.

    The shared one, reset, when it can take the settings; a fresh one otherwise.
    """
    if emulator_settings.upload_base_path != shared_emulator.state.settings.upload_base_path:
        with run_emulator(emulator_settings) as running:
            yield running
        return
    shared_emulator.state.settings = emulator_settings
    shared_emulator.reset()
    yield shared_emulator
    shared_emulator.reset()  # stop what the test left running: tasks, callbacks


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[Client]:
    running = Client(emulator)
    yield running
    running.http.close()
