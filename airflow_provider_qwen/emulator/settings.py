"""What the emulator does: keys, credits, latency, failures and injected faults."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Endpoint names used for fault injection and statistics.
ENDPOINTS = ("createTask", "recordInfo", "upload", "credit", "download-url", "results", "files")

#: Fault kinds, in the order a request's random draw meets them.
FAULT_KINDS = ("rate_limited", "maintenance", "server_error", "malformed", "html", "drop", "slow")


class Faults(BaseModel):
    """
    Faults injected into one endpoint's answers; each rate is the fraction of requests hit.

    A request meets at most one fault, so the rates may add up to 1 at most. A faulted request never
    reaches the endpoint, so a faulted ``createTask`` creates nothing, except ``slow``, which only
    delays the real answer.
    """

    model_config = ConfigDict(extra="forbid")

    rate_limited: float = Field(0.0, ge=0, le=1, description="answer code 429 with Retry-After")
    maintenance: float = Field(0.0, ge=0, le=1, description="answer code 455")
    server_error: float = Field(0.0, ge=0, le=1, description="answer code 500")
    malformed: float = Field(0.0, ge=0, le=1, description="answer HTTP 200 with a body that is not JSON")
    html: float = Field(0.0, ge=0, le=1, description="answer HTTP 502 with an HTML error page")
    drop: float = Field(0.0, ge=0, le=1, description="close the connection without answering")
    slow: float = Field(0.0, ge=0, le=1, description="answer normally, after slow_seconds")
    slow_seconds: float = Field(2.0, ge=0, description="delay of a slow answer")
    retry_after: float = Field(1.0, ge=0, description="Retry-After seconds sent with 429")

    @model_validator(mode="after")
    def _rates_fit_in_one(self) -> Faults:
        total = sum(getattr(self, kind) for kind in FAULT_KINDS)
        if total > 1 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}, more than 1")
        return self


class EmulatorSettings(BaseModel):
    """
    Everything the emulator can be told. Defaults behave like a healthy Apikley account.

    :ivar api_keys: Bearer keys it accepts.
    :ivar credits: the account's starting credits (also what ``/_emulator/reset`` restores).
    :ivar cost_per_task: credits charged per accepted task.
    :ivar create_rate_limit: tasks a key may create per ``create_rate_window`` seconds; more get 429.
    :ivar create_rate_window: length of the rate limit's sliding window, in seconds.
    :ivar latency: seconds a task spends waiting, queuing and generating, before jitter.
    :ivar jitter: each latency is multiplied by a random factor in 1 ± jitter.
    :ivar fail_fraction: fraction of tasks that end in ``fail`` with failCode 501.
    :ivar file_ttl: seconds uploaded files and results stay available (404 after).
    :ivar download_link_ttl: seconds a link from ``download-url`` stays valid.
    :ivar upload_base_path: where the upload API lives, like Apikley's ``/file-upload``.
    :ivar allowed_image_hosts: hosts (``name`` or ``name:port``), besides itself, it fetches
        ``image_url`` and ``fileUrl`` from.
    :ivar callback_key: HMAC key that signs callbacks; ``None`` sends them unsigned.
    :ivar callback_twice: deliver every callback twice, as Apikley may.
    :ivar callback_attempts: tries per delivery before it is given up.
    :ivar callback_timeout: seconds one callback POST may take.
    :ivar callback_backoff: seconds before the first retry of a callback, doubled for each next one.
    :ivar callback_drop: fraction of tasks, drawn at random, whose callback is never sent
        (``callback dropped`` in the stats), as when every delivery of it is lost.
    :ivar faults: injected faults by endpoint name (see :data:`ENDPOINTS`).
    :ivar maintenance_seconds: answer 455 to every API call for this long, counted from when the
        value is set (at start, or later through ``/_emulator/config``).
    :ivar random_seed: seed for jitter, failures and faults, for repeatable runs.
    """

    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(default_factory=lambda: ["test-key"], min_length=1)
    credits: float = Field(1000.0, ge=0)
    cost_per_task: float = Field(1.0, ge=0)
    create_rate_limit: int = Field(20, ge=1)
    create_rate_window: float = Field(10.0, gt=0)
    latency: tuple[float, float, float] = (0.5, 1.0, 2.0)
    jitter: float = Field(0.2, ge=0, lt=1)
    fail_fraction: float = Field(0.0, ge=0, le=1)
    file_ttl: float = Field(24 * 3600.0, gt=0)
    download_link_ttl: float = Field(20 * 60.0, gt=0)
    upload_base_path: str = Field("/file-upload", pattern=r"^(/[A-Za-z0-9._-]+)*$")
    allowed_image_hosts: list[str] = Field(default_factory=list)
    callback_key: str | None = None
    callback_twice: bool = False
    callback_attempts: int = Field(3, ge=1)
    callback_timeout: float = Field(15.0, gt=0)
    callback_backoff: float = Field(1.0, ge=0)
    callback_drop: float = Field(0.0, ge=0, le=1)
    faults: dict[str, Faults] = Field(default_factory=dict)
    maintenance_seconds: float = Field(0.0, ge=0)
    random_seed: int | None = None

    @field_validator("latency")
    @classmethod
    def _latency_not_negative(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 0:
            raise ValueError("latencies cannot be negative")
        return value

    @field_validator("faults")
    @classmethod
    def _known_endpoints(cls, value: dict[str, Faults]) -> dict[str, Faults]:
        unknown = sorted(set(value) - set(ENDPOINTS))
        if unknown:
            raise ValueError(f"unknown endpoint(s) {unknown}; known: {list(ENDPOINTS)}")
        return value
