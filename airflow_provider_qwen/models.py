"""
Typed shapes of what goes to Apikley and what comes back.

:class:`QwenImageToImageInput` holds the ``input`` of a ``qwen/image-to-image`` task with the
constraints of the model's published schema, so a bad value is refused before any request (and
before any credit is spent). :class:`TaskRecord` is one answer of ``GET /api/v1/jobs/recordInfo``.
"""

from __future__ import annotations

import json
import logging
import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from airflow_provider_qwen.exceptions import ApikleyBadResponseError, ApikleyInputError
from airflow_provider_qwen.safe_text import escape_controls

# The checks live in airflow_provider_qwen.validation; imported from here they keep working.
from airflow_provider_qwen.validation import (  # noqa: F401
    MAX_INPUT_BYTES,
    MODEL_PATTERN,
    MODEL_RULE,
    TASK_ID_PATTERN,
    TASK_ID_RULE,
    check_callback_url,
    check_input,
    check_model,
    check_task_id,
    is_http_url,
    is_task_id,
    load_input_schema,
)

QWEN_IMAGE_TO_IMAGE = "qwen/image-to-image"

log = logging.getLogger(__name__)


def _reject_bool(value: Any) -> Any:
    # pydantic would read True as 1; for a number field that is always a mistake.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _on_step(step: float) -> AfterValidator:
    # A tolerance, not %: in floats 0.57 % 0.01 != 0, and 0.1 + 0.2 is not quite 0.3.
    def check(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        steps = value / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            raise ValueError(f"must be a multiple of {step}")
        return value

    return AfterValidator(check)


Number = Annotated[float, BeforeValidator(_reject_bool)]
Integer = Annotated[int, BeforeValidator(_reject_bool)]


class QwenImageToImageInput(BaseModel):
    """
    The ``input`` object of a ``qwen/image-to-image`` task.

    Only ``prompt`` and ``image_url`` are required. A field left as ``None`` is left out of the
    request, so Apikley applies its own default (strength 0.8, png, no acceleration, 30 steps,
    guidance 2.5, safety checker on). Numbers given as strings (as Jinja renders them) are
    converted; anything else that breaks a rule raises :class:`ApikleyInputError` naming the field,
    the value and the rule.

    :param prompt: what to do to the image; at most 5000 characters.
    :param image_url: http(s) URL of the source image (jpeg, png or webp, at most 10 MB).
    :param strength: 0 keeps the original, 1 remakes it fully; 0 to 1 in steps of 0.01.
    :param output_format: ``png`` or ``jpeg``.
    :param acceleration: ``none``, ``regular`` or ``high``; faster, at some cost in quality.
    :param negative_prompt: what to keep out of the image; at most 500 characters.
    :param seed: the same seed, prompt and model version give the same image.
    :param num_inference_steps: 2 to 250 denoising steps.
    :param guidance_scale: how closely to follow the prompt; 0 to 20 in steps of 0.1.
    :param enable_safety_checker: ``False`` turns the safety checker off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=5000)
    image_url: str
    strength: Annotated[Number, _on_step(0.01)] | None = Field(default=None, ge=0, le=1)
    output_format: Literal["png", "jpeg"] | None = None
    acceleration: Literal["none", "regular", "high"] | None = None
    negative_prompt: str | None = Field(default=None, max_length=500)
    seed: Integer | None = None
    num_inference_steps: Integer | None = Field(default=None, ge=2, le=250)
    guidance_scale: Annotated[Number, _on_step(0.1)] | None = Field(default=None, ge=0, le=20)
    enable_safety_checker: bool | None = None

    @field_validator("image_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not is_http_url(value):
            raise ValueError("must be an http:// or https:// URL of an uploaded image")
        return value

    @classmethod
    def build(cls, **fields: Any) -> QwenImageToImageInput:
        """
        Validate ``fields`` and return the input, or raise :class:`ApikleyInputError`.

        :raises ApikleyInputError: naming every field that breaks a rule, its value and the rule.
        """
        try:
            return cls(**fields)
        except ValidationError as err:
            raise ApikleyInputError(describe_validation_error(cls.__name__, err)) from None

    def to_api(self) -> dict[str, Any]:
        """Return the ``input`` object as Apikley expects it, without the fields left unset."""
        return self.model_dump(exclude_none=True)


def describe_validation_error(model_name: str, err: ValidationError) -> str:
    """One line per broken rule: ``field=value: rule``, values shortened to stay readable."""
    lines = []
    for problem in err.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"]) or "(input)"
        value = problem.get("input")
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        rule = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            lines.append(f"{field}: is required")
        elif problem["type"] == "extra_forbidden":
            lines.append(f"{field}={shown}: is not a field of {model_name}")
        else:
            lines.append(f"{field}={shown}: {rule}")
    return f"Invalid {model_name}: " + "; ".join(lines)


class TaskState(StrEnum):
    """The life of an Apikley task: waiting → queuing → generating → success | fail."""

    WAITING = "waiting"
    QUEUING = "queuing"
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (successfully or not)."""
        return self in (TaskState.SUCCESS, TaskState.FAIL)


#: How deep in ``resultJson`` result URLs are looked for.
MAX_RESULT_DEPTH = 4
#: The most result URLs one task may have: each is a download, so an answer cannot ask for thousands.
MAX_RESULT_URLS = 64
#: How many dropped ``resultUrls`` entries the warning quotes, and how much of each.
DROPPED_SAMPLE_SIZE, DROPPED_SAMPLE_CHARS = 3, 60


def _urls_in(value: Any, depth: int) -> list[str]:
    """Return the http(s) URLs among ``value``'s strings, nested lists and dicts, at most ``depth`` levels down."""
    if isinstance(value, str):
        return [value] if is_http_url(value) else []
    if depth <= 0:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [url for item in items for url in _urls_in(item, depth - 1)]


#: How deeply ``param`` and ``resultJson`` may nest; deeper answers are refused as malformed.
MAX_JSON_DEPTH = 64


def _decode_json_string(value: Any) -> Any:
    # param and resultJson arrive as JSON encoded inside a string; "" means "nothing yet".
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except RecursionError:
            raise ValueError(f"nested deeper than the {MAX_JSON_DEPTH} levels an answer may have") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than the {MAX_JSON_DEPTH} levels an answer may have")
    return value


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value``, counted without recursion (an answer chooses the depth)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class TaskRecord(BaseModel):
    r"""
    One answer of ``recordInfo``: the state of an Apikley task and, once done, its results.

    Optional fields may be absent; times are Unix milliseconds as Apikley sends them. What Apikley
    says is read as untrusted: control characters in ``model``, ``fail_code`` and ``fail_message``
    are escaped (``ESC`` as ``\x1b``); a ``resultUrls`` entry that is not an http(s) URL (another
    scheme, a JSON object) is dropped with a warning that counts and quotes them, after every entry
    was counted against :data:`MAX_RESULT_URLS`.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    task_id: str = Field(validation_alias=AliasChoices("taskId", "task_id"))
    state: TaskState
    model: str | None = None
    param: Annotated[dict[str, Any] | None, BeforeValidator(_decode_json_string)] = None
    result: Annotated[dict[str, Any] | None, BeforeValidator(_decode_json_string)] = Field(
        default=None, validation_alias="resultJson"
    )
    fail_code: str | None = Field(default=None, validation_alias=AliasChoices("failCode", "fail_code"))
    fail_message: str | None = Field(default=None, validation_alias=AliasChoices("failMsg", "fail_msg"))
    cost_time: float | None = Field(default=None, validation_alias="costTime")
    create_time: int | None = Field(default=None, validation_alias="createTime")
    update_time: int | None = Field(default=None, validation_alias="updateTime")
    complete_time: int | None = Field(default=None, validation_alias="completeTime")
    credits_consumed: float | None = Field(default=None, validation_alias="creditsConsumed")

    @field_validator("task_id")
    @classmethod
    def _task_id_shape(cls, value: str) -> str:
        if not is_task_id(value):
            raise ValueError(TASK_ID_RULE)
        return value

    @field_validator("result")
    @classmethod
    def _few_http_result_urls(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return None
        listed = value.get("resultUrls")
        entries = listed if isinstance(listed, list) else [] if listed is None else [listed]
        dropped = [entry for entry in entries if not is_http_url(entry)]
        # every entry counts, so a flood of entries that are not URLs is refused as a flood of URLs is
        elsewhere = {key: item for key, item in value.items() if key != "resultUrls"}
        found = len(entries) + len(_urls_in(elsewhere, depth=MAX_RESULT_DEPTH))
        if found > MAX_RESULT_URLS:
            raise ValueError(
                f"resultJson holds {found} URLs (every resultUrls entry counted), "
                f"more than the {MAX_RESULT_URLS} a task may have"
            )
        if not dropped and isinstance(listed, list | None):
            return value
        if dropped:
            sample = ", ".join(
                escape_controls(repr(entry)[:DROPPED_SAMPLE_CHARS]) for entry in dropped[:DROPPED_SAMPLE_SIZE]
            )
            log.warning(
                "Apikley task %s: dropped %d of its %d resultUrls entries, which are not http(s) URLs: %s%s",
                info.data.get("task_id", "(unknown)"),
                len(dropped),
                len(entries),
                sample,
                ", ..." if len(dropped) > DROPPED_SAMPLE_SIZE else "",
            )
        return {**value, "resultUrls": [entry for entry in entries if is_http_url(entry)]}

    @field_validator("model", "fail_code", "fail_message")
    @classmethod
    def _controls_escaped(cls, value: str | None) -> str | None:
        return None if value is None else escape_controls(value)

    @field_validator("fail_code", mode="before")
    @classmethod
    def _code_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @classmethod
    def from_api(cls, data: object) -> TaskRecord:
        """
        Parse the ``data`` object of a ``recordInfo`` answer.

        :raises ApikleyBadResponseError: when the answer lacks the task id or the state, has a state
            Apikley does not document, or carries ``param``/``resultJson`` that are not JSON.
        """
        try:
            return cls.model_validate(data)
        except (ValidationError, ValueError) as err:
            raise ApikleyBadResponseError(f"Unexpected recordInfo answer from Apikley: {err}") from None
        except RecursionError:  # nesting that the checks above did not see first
            raise ApikleyBadResponseError("Unexpected recordInfo answer from Apikley: nested too deeply") from None

    @property
    def result_urls(self) -> list[str]:
        """
        URLs of the results, empty until the task succeeds.

        They are ``resultUrls`` (only its http(s) URLs are kept: see :class:`TaskRecord`), then any
        other http(s) URL in ``resultJson`` (models that answer with a ``resultObject``). They
        expire: copy them.
        """
        urls = list((self.result or {}).get("resultUrls") or [])
        for url in _urls_in(self.result, depth=MAX_RESULT_DEPTH):
            if url not in urls:
                urls.append(url)
        return urls

    @property
    def result_beyond_urls(self) -> dict[str, Any] | None:
        """The parsed ``resultJson`` when it says more than ``resultUrls`` (text, objects), else ``None``."""
        return self.result if self.result and set(self.result) != {"resultUrls"} else None

    def describe(self) -> dict[str, Any]:
        """Return the task as JSON primitives: what it was asked, where it is or how it ended, and its results."""
        return {
            "apikley_task_id": self.task_id,
            "model": self.model,
            "state": self.state.value,
            "result_urls": self.result_urls,
            "fail_code": self.fail_code,
            "fail_message": self.fail_message,
            "input": self.input,
            "create_time": self.create_time,
            "complete_time": self.complete_time,
            "credits_consumed": self.credits_consumed,
        }

    @property
    def input(self) -> dict[str, Any]:
        """The ``input`` the task was created with, when Apikley echoes it in ``param``."""
        return dict((self.param or {}).get("input") or {})
