"""
A task's life after createTask: its timeline, its pictures (made once, in a thread), the results, the callback.

The only part that depends on the model is its generate function; the two defined here are the
ones :mod:`~.models` names for its models.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from airflow_provider_qwen.emulator.callbacks import deliver_callback
from airflow_provider_qwen.emulator.fetching import FetchProblem, Origin, read_url
from airflow_provider_qwen.emulator.imaging import OUTPUT_FORMATS, ImageProblem, draw_image, edit_image
from airflow_provider_qwen.emulator.state import EmulatorState
from airflow_provider_qwen.emulator.store import Task

log = logging.getLogger(__name__)

#: A model's work: ``(state, input with the defaults filled in, origin)`` → the encoded pictures, in
#: ``output_format``. It raises :class:`FetchProblem` or :class:`ImageProblem` for an input it cannot use.
Generate = Callable[[EmulatorState, dict[str, Any], Origin], Awaitable[list[bytes]]]

#: failCode and failMsg of a task that fails by ``fail_fraction``.
EMULATED_FAILURE = ("501", "Generation failed: the model did not return an image (emulated failure)")


def new_task(state: EmulatorState, body: dict[str, Any], now: float) -> Task:
    """Return a task for a valid createTask body, with its state timeline drawn from the latency settings."""
    settings = state.settings
    waiting, queuing, generating = (
        seconds * (1 + state.rng.uniform(-settings.jitter, settings.jitter)) for seconds in settings.latency
    )
    request: dict[str, Any] = {key: body[key] for key in ("model", "callBackUrl", "input") if key in body}
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


async def edit_source_image(state: EmulatorState, task_input: dict[str, Any], origin: Origin) -> list[bytes]:
    """qwen/image-to-image: one edit of the picture at ``image_url``."""
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
    return [result]


async def draw_from_prompt(state: EmulatorState, task_input: dict[str, Any], origin: Origin) -> list[bytes]:
    """qwen/text-to-image: ``num_images`` drawings of the prompt, the n-th (from 0) with seed ``seed + n``."""
    seed = int(task_input.get("seed", 0))

    def draw_all() -> list[bytes]:
        return [
            draw_image(
                task_input["prompt"],
                image_size=task_input["image_size"],
                seed=seed + index,
                output_format=task_input["output_format"],
                negative_prompt=task_input.get("negative_prompt", ""),
            )
            for index in range(task_input["num_images"])
        ]

    return await asyncio.to_thread(draw_all)


async def _sleep_until(moment: float) -> None:
    # the loop's timers may wake a little early: the state must not end before its time
    while (remaining := moment - time.time()) > 0:
        await asyncio.sleep(remaining)


async def run_task(
    state: EmulatorState,
    task: Task,
    generate: Generate,
    defaults: Mapping[str, Any],
    origin: Origin,
    base_url: str,
) -> None:
    """
    Make the task's pictures when it starts generating, publish them when it is due, then call back.

    :param generate: makes the pictures, for the model of ``task.request``.
    :param defaults: that model's documented input defaults.

    A task whose input cannot be used (a source that cannot be read or decoded) fails with failCode
    422 and a message saying why.
    """
    await _sleep_until(task.generating_at)
    fail: tuple[str, str] | None = None
    results: list[bytes] | None = None
    task_input = {**defaults, **task.request["input"]}
    if task.will_fail:
        fail = EMULATED_FAILURE
    else:
        try:
            results = await generate(state, task_input, origin)
        except (FetchProblem, ImageProblem) as err:
            fail = ("422", f"Generation failed: {err}")
        except Exception as err:
            log.exception("task %s: generating its pictures failed", task.task_id)
            fail = ("500", f"Generation failed: internal error ({type(err).__name__})")
    await _sleep_until(task.done_at)
    if results is not None:
        _, mime_type, extension = OUTPUT_FORMATS[task_input["output_format"]]
        urls = []
        for index, content in enumerate(results):
            path = f"results/{task.task_id}/{index}.{extension}"
            state.files.put(path, content, mime_type, state.settings.file_ttl)
            urls.append(f"{base_url}/{path}")
        task.finish(time.time(), result_urls=urls)
    else:
        task.finish(time.time(), fail=fail)
    callback_url = task.request.get("callBackUrl")
    if callback_url and state.rng.random() < state.settings.callback_drop:
        state.stats["callback dropped"] += 1  # as if every delivery of it were lost
    elif callback_url:
        state.spawn(_call_back(state, callback_url, task))


async def _call_back(state: EmulatorState, url: str, task: Task) -> None:
    """Deliver the callback; the stats count the deliveries the receiver took (``callback taken``)."""
    delivered = await deliver_callback(url, task, state.settings)
    # counted after the await: `+= await` would read the count first, and lose concurrent deliveries
    state.stats["callback taken"] += delivered
