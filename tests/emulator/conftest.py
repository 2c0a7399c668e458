from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator

KEY = "emulator-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def png(colour: str = "#c0392b", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class Client:
    """Speaks to a running emulator the way Apikley's documentation says a client does."""

    def __init__(self, running) -> None:
        self.running = running
        self.url = running.base_url
        self.http = requests.Session()

    def upload(self, content: bytes = b"", name: str = "a.png", path: str = "tests") -> requests.Response:
        return self.http.post(
            f"{self.url}/file-upload/api/file-stream-upload",
            headers=AUTH,
            files={"file": (name, content or png(), "image/png")},
            data={"uploadPath": path},
        )

    def image_url(self, content: bytes = b"", name: str = "a.png") -> str:
        return self.upload(content, name).json()["data"]["downloadUrl"]

    def create(self, headers: dict | None = None, **input_fields) -> requests.Response:
        body = {"model": "qwen/image-to-image", "input": {"prompt": "sepia", **input_fields}}
        if "image_url" not in body["input"]:
            body["input"]["image_url"] = self.image_url()
        return self.http.post(
            f"{self.url}/api/v1/jobs/createTask", headers=AUTH if headers is None else headers, json=body
        )

    def record(self, task_id: str) -> dict:
        return self.http.get(f"{self.url}/api/v1/jobs/recordInfo", headers=AUTH, params={"taskId": task_id}).json()

    def wait(self, task_id: str, timeout: float = 10) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.record(task_id)["data"]
            if data["state"] in ("success", "fail"):
                return data
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} did not end in {timeout}s")

    def stats(self) -> dict:
        return self.http.get(f"{self.url}/_emulator/stats").json()

    def configure(self, **settings) -> dict:
        return self.http.post(f"{self.url}/_emulator/config", json=settings).json()


@pytest.fixture
def emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(api_keys=[KEY], latency=(0.05, 0.05, 0.1), random_seed=1)


@pytest.fixture
def client(emulator_settings):
    with run_emulator(emulator_settings) as running:
        yield Client(running)
