"""
Every operator through a failed first try and its retry: what the retry pays for, and what it returns.

Each case is deferrable, with ``retries=1`` and a short ``retry_delay``, and its first try fails
after it paid for an Apikley task, in one of two ways that do not depend on timing:

- ``raise``: the try ends its edit (results stored, value made) and then raises, as a check that
  runs after the operator would;
- ``timeout``: the try's ``timeout`` is shorter than the emulator's latency, so its trigger says
  ``timeout`` while the edit still runs (the retry waits its full ``timeout``).

The cases, by task id: ``qwen_raise`` (with an asset outlet) and ``qwen_timeout``, the typed
operator; ``generic_timeout``, the generic operator; ``batch_raise``, the batch operator with a few
items inline; ``submit_raise`` handing its dict to ``sensor_raise`` (with an asset outlet), which
fails its first try after copying the results too (whether it deferred or found the edit ended).

Every prompt names the run's ``variant`` and the task that sends it, so the emulator's tasks can be
told apart by case, and is read from the Variable ``qwen_tries_<variant>_<task id>`` when that is
set: the test sets it between the tries of the ``changed`` run, so its retries render a new prompt,
and never for the ``same`` run.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Asset, Param, task

from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor

DAG_ID = "qwen_system_tries"
#: The asset the cases with outlets update.
EDITED = Asset("apikley://system/tries")
#: The Variable whose value, when set, replaces a task's prompt: ``qwen_tries_<variant>_<task id>``.
PROMPT_VARIABLE = "'qwen_tries_' ~ params.variant ~ '_' ~ task.task_id"
PROMPT = f"{{{{ var.value.get({PROMPT_VARIABLE}, params.variant ~ ' ' ~ task.task_id ~ ': sepia studio light') }}}}"
IMAGE_URL = "{{ ti.xcom_pull(task_ids='prepare') }}"
OUTPUT_PATH = "{{ params.output_uri }}/{{ task.task_id }}"
#: Seconds a first try of a ``timeout`` case waits: far less than an edit takes on the emulator.
FIRST_TRY_TIMEOUT = 1.0
RETRY_DELAY = timedelta(seconds=4)
BATCH_SEEDS = (1, 2)
#: Seconds a retry's trigger waits before asking about edits that have ended (see FailingBatch).
SETTLE_SECONDS = 5.0


def fail_first_try(context: Any, what: str) -> None:
    if context["ti"].try_number == 1:
        raise RuntimeError(f"failing try 1 on purpose, after {what}")


class FailsAfterItsResult:
    """Fails the first try once its edit has ended, its results stored and its value made."""

    def execute_complete(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().execute_complete(context, *args, **kwargs)  # type: ignore[misc]
        fail_first_try(context, "the edit's result")
        return result


class TimesOutOnFirstTry:
    """Waits only ``FIRST_TRY_TIMEOUT`` on the first try: its trigger ends with ``timeout``."""

    def execute(self, context: Any) -> Any:
        if context["ti"].try_number == 1:
            self.timeout = FIRST_TRY_TIMEOUT
        return super().execute(context)  # type: ignore[misc]


class FailingQwen(FailsAfterItsResult, QwenImageToImageOperator):
    pass


class TimingOutQwen(TimesOutOnFirstTry, QwenImageToImageOperator):
    pass


class TimingOutGeneric(TimesOutOnFirstTry, ApikleyCreateTaskOperator):
    pass


class FailingBatch(FailsAfterItsResult, QwenImageToImageBatchOperator):
    """
    On a retry, its trigger asks about the resumed edits no sooner than ``SETTLE_SECONDS`` after deferring.

    Every item the retry resumes has ended, so its trigger would fire at once, and Airflow 3.3.2's
    scheduler fails a task whose trigger has requeued it before the scheduler saw the deferring
    worker exit (apache/airflow#67287, #72716): a race of Airflow's, not the subject here.
    """

    def execute(self, context: Any) -> Any:
        if context["ti"].try_number > 1:
            # the items were submitted after the run started: each one's answer is due SETTLE_SECONDS from now, or later
            self.expected_duration = time.time() - context["dag_run"].start_date.timestamp() + SETTLE_SECONDS
        return super().execute(context)


class FailingSensor(FailsAfterItsResult, ApikleyTaskSensor):
    """Also fails a first try that found the edit ended at its first check, and never deferred."""

    def execute(self, context: Any) -> Any:
        result = super().execute(context)
        fail_first_try(context, "the edit's result")
        return result


class FailingSubmit(QwenImageToImageOperator):
    """Submits without waiting, then fails the first try once its value is made."""

    def execute(self, context: Any) -> dict[str, Any]:
        result = super().execute(context)
        fail_first_try(context, "submitting")
        return result


with DAG(
    dag_id=DAG_ID,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "output_uri": Param("file:///tmp/qwen-system-tries", type="string"),
        "variant": Param("same", enum=["same", "changed"]),
    },
    default_args={"retries": 1, "retry_delay": RETRY_DELAY},
    tags=["qwen", "system-test"],
):

    @task
    def prepare() -> str:
        """Upload the source image once."""
        from airflow_provider_qwen.demo.images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        return ApikleyHook().upload_file(draw_product("Tries", "#eef", "#2c3e50"), "system/tries", "source.png")

    edit = {"image_url": IMAGE_URL, "prompt": PROMPT, "seed": 7}
    waits = {"deferrable": True, "poll_interval": 0.5, "output_path": OUTPUT_PATH}
    submit = FailingSubmit(task_id="submit_raise", wait_for_completion=False, **edit, **waits)
    prepare() >> [
        # the override of execute_complete makes a worker finish the task, as the provider's default
        FailingQwen(task_id="qwen_raise", outlets=[EDITED], **edit, **waits),
        TimingOutQwen(task_id="qwen_timeout", **edit, **waits),
        TimingOutGeneric(task_id="generic_timeout", model=QWEN_IMAGE_TO_IMAGE, input=edit, **waits),
        FailingBatch(
            task_id="batch_raise",
            inputs=[{**edit, "seed": seed} for seed in BATCH_SEEDS],
            poll_interval=0.5,
            output_path=OUTPUT_PATH,
        ),
        submit,
    ]
    FailingSensor(
        task_id="sensor_raise", apikley_task_id=submit.output, deferrable=True, poke_interval=0.5, outlets=[EDITED]
    )
