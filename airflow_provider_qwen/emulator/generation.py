"""A task's life after createTask: its timeline, the edit (once, in a thread), the result, the callback."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from airflow_provider_qwen.emulator.callbacks import deliver_callback
from airflow_provider_qwen.emulator.fetching import FetchProblem, Origin, read_url
from airflow_provider_qwen.emulator.imaging import OUTPUT_FORMATS, ImageProblem, edit_image
from airflow_provider_qwen.emulator.state import EmulatorState
from airflow_provider_qwen.emulator.store import Task
from airflow_provider_qwen.emulator.validation import INPUT_DEFAULTS

log = logging.getLogger(__name__)

#: failCode and failMsg of a task that fails by ``fail_fraction``.
EMULATED_FAILURE = ("501", "Generation failed: the model did not return an image (emulated failure)")


def new_task(state: EmulatorState, body: dict[str, Any], now: float) -> Task:
    """A task for a valid createTask body, with its state timeline drawn from the latency settings."""
    settings = state.settings
    waiting, queuing, generating = (
        seconds * (1 + state.rng.uniform(-settings.jitter, settings.jitter)) for seconds in settings.latency
    )
    request = {key: body[key] for key in ("model", "callBackUrl", "input") if key in body}
    task_id = uuid.uuid4().hex
    return Task(
        task_id=task_id,
        request=request,
        created=now,
        queuing_at=now + waiting,
        generating_at=now + waiting + queuing,
        done_at=now + waiting + queuing + generating,
        will_fail=state.rng.random() < settings.fail_fraction,
        credits=settings.cost_per_task,
    )


async def _edit(state: EmulatorState, task: Task, origin: Origin) -> tuple[bytes, str]:
    task_input = {**INPUT_DEFAULTS, **task.request["input"]}
    source, content_type = await read_url(
        task_input["image_url"], origin, state.files, state.settings.allowed_image_hosts
    )
    result = await asyncio.to_thread(
        edit_image,
        source,
        task_input["prompt"],
        strength=task_input["strength"],
        seed=int(task_input.get("seed", 0)),
        output_format=task_input["output_format"],
        content_type=content_type,
    )
    return result, task_input["output_format"]


async def _sleep_until(moment: float) -> None:
    # the loop's timers may wake a little early: the state must not end before its time
    while (remaining := moment - time.time()) > 0:
        await asyncio.sleep(remaining)


async def run_task(state: EmulatorState, task: Task, origin: Origin, base_url: str) -> None:
    """
    Make the edit when the task starts generating, publish it when the task is due, then call back.

    A task whose source cannot be read or decoded fails with failCode 422 and a message saying why.
    """
    await _sleep_until(task.generating_at)
    fail: tuple[str, str] | None = None
    result: tuple[bytes, str] | None = None
    if task.will_fail:
        fail = EMULATED_FAILURE
    else:
        try:
            result = await _edit(state, task, origin)
        except (FetchProblem, ImageProblem) as err:
            fail = ("422", f"Generation failed: {err}")
        except Exception as err:
            log.exception("task %s: the edit failed", task.task_id)
            fail = ("500", f"Generation failed: internal error ({type(err).__name__})")
    await _sleep_until(task.done_at)
    if result is not None:
        content, output_format = result
        _, mime_type, extension = OUTPUT_FORMATS[output_format]
        path = f"results/{task.task_id}/0.{extension}"
        state.files.put(path, content, mime_type, state.settings.file_ttl)
        task.finish(time.time(), result_urls=[f"{base_url}/{path}"])
    else:
        task.finish(time.time(), fail=fail)
    callback_url = task.request.get("callBackUrl")
    if callback_url:
        state.spawn(_call_back(state, callback_url, task))


async def _call_back(state: EmulatorState, url: str, task: Task) -> None:
    """Deliver the callback; the stats count the deliveries the receiver took (``callback taken``)."""
    delivered = await deliver_callback(url, task, state.settings)
    # counted after the await: `+= await` would read the count first, and lose concurrent deliveries
    state.stats["callback taken"] += delivered
