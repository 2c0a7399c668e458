"""What the emulator does: keys, credits, latency, failures and injected faults."""

from __future__ import annotations

from pydantic import BaseModel, Field

#: Endpoint names used for fault injection and statistics.
ENDPOINTS = ("createTask", "recordInfo", "upload", "credit", "download-url", "results", "files")


class Faults(BaseModel):
    """
    Faults injected into one endpoint's answers; each rate is the fraction of requests hit.

    A faulted ``createTask`` never creates a task.
    """

    rate_limited: float = Field(0.0, ge=0, le=1, description="answer code 429 with Retry-After")
    maintenance: float = Field(0.0, ge=0, le=1, description="answer code 455")
    server_error: float = Field(0.0, ge=0, le=1, description="answer code 500")
    malformed: float = Field(0.0, ge=0, le=1, description="answer a body that is not JSON")
    html: float = Field(0.0, ge=0, le=1, description="answer HTTP 502 with an HTML page")
    drop: float = Field(0.0, ge=0, le=1, description="close the connection without answering")
    slow: float = Field(0.0, ge=0, le=1, description="answer after slow_seconds")
    slow_seconds: float = Field(2.0, ge=0)
    retry_after: float = Field(1.0, ge=0, description="Retry-After seconds sent with 429")


class EmulatorSettings(BaseModel):
    """
    Everything the emulator can be told. Defaults behave like a healthy Apikley account.

    :param api_keys: Bearer keys it accepts.
    :param credits: the account's starting credits.
    :param cost_per_task: credits charged per accepted task.
    :param create_rate_limit: tasks a key may create per ``create_rate_window`` seconds.
    :param latency: seconds a task spends waiting, queuing and generating, before jitter.
    :param jitter: each latency is multiplied by a random factor in 1 ± jitter.
    :param fail_fraction: fraction of tasks that end in ``fail``.
    :param file_ttl: seconds uploaded files and results stay available.
    :param upload_base_path: where the upload API lives, like Apikley's ``/file-upload``.
    :param allowed_image_hosts: hosts (besides itself) it fetches ``image_url`` and ``fileUrl`` from.
    :param callback_key: HMAC key that signs callbacks; ``None`` sends them unsigned.
    :param callback_twice: deliver every callback twice, as Apikley may.
    :param faults: injected faults by endpoint name (see :data:`ENDPOINTS`).
    :param maintenance_seconds: answer 455 to every API call for this long after start.
    :param random_seed: seed for jitter, failures and faults, for repeatable runs.
    """

    api_keys: list[str] = Field(default_factory=lambda: ["test-key"])
    credits: float = 1000.0
    cost_per_task: float = 1.0
    create_rate_limit: int = Field(20, ge=1)
    create_rate_window: float = Field(10.0, gt=0)
    latency: tuple[float, float, float] = (0.5, 1.0, 2.0)
    jitter: float = Field(0.2, ge=0, lt=1)
    fail_fraction: float = Field(0.0, ge=0, le=1)
    file_ttl: float = Field(24 * 3600.0, gt=0)
    upload_base_path: str = Field("/file-upload", pattern=r"^(/[A-Za-z0-9._-]+)*$")
    allowed_image_hosts: list[str] = Field(default_factory=list)
    callback_key: str | None = None
    callback_twice: bool = False
    faults: dict[str, Faults] = Field(default_factory=dict)
    maintenance_seconds: float = Field(0.0, ge=0)
    random_seed: int | None = None
