"""
Mapped edits submitting at once, paced together by the provider's app against the emulator's create limit.

Forty edits, each in a thread of its own as on forty workers, run the operator's create path at
once against an emulator that takes 10 creates in any 2 s. With the shared pace (the provider's
app on loopback, on the tests' migrated database), the emulator answers at most two of them 429
and the creates go out at 90% of the limit at least; without it, most first creates meet a 429.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from unittest import mock

import pytest

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from tests.conftest import REAL_RETRY_WAIT
from tests.integration.conftest import airflow_db  # noqa: F401 (the app's tables are in Airflow's database)
from tests.measurements import Measurement
from tests.provider_app import serving_provider_app

#: The emulator's create limit here: 10 in any 2 s, a fifth of Apikley's window so the test is short.
LIMIT, WINDOW = 10, 2.0
#: Edits submitting together, four windows' worth.
EDITS = 40
SECTION = "create pace: mapped edits against the create limit (tests/loopback/test_create_pace.py)"


@pytest.fixture
def limited(apikley, monkeypatch):
    """The emulator at :data:`LIMIT` creates per :data:`WINDOW` s, and ``apikley_default`` saying so."""
    apikley.configure(create_rate_limit=LIMIT, create_rate_window=WINDOW)
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection())
    return apikley


@pytest.fixture
def pace_url(airflow_db, monkeypatch) -> Iterator[str]:  # noqa: F811 (the fixture imported above)
    """The provider's app on loopback, and ``[api] base_url`` on it."""
    with serving_provider_app() as base_url:
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
        yield base_url


def submit_together(image_url: str, edits: int = EDITS) -> list[BaseException]:
    """Run ``edits`` edits' create path at once, each in a thread as on a worker of its own; return their errors."""
    start = threading.Barrier(edits)
    errors: list[BaseException] = []

    def edit(map_index: int) -> None:
        operator = QwenImageToImageOperator(
            task_id="edit",
            prompt=f"variation {map_index}",
            image_url=image_url,
            seed=map_index,
            wait_for_completion=False,  # the create path alone: what the pace is about
            check_image_urls=False,
        )
        ti = mock.Mock(dag_id="paced", run_id="manual__1", task_id="edit", map_index=map_index, try_number=1)
        start.wait()
        try:
            operator.execute({"ti": ti})
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=edit, args=(index,)) for index in range(edits)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def create_figures(emulator) -> tuple[int, int, float]:
    """The 429 answers to createTask, the creates accepted, and their rate as a fraction of the limit's."""
    refused = emulator.stats()["api_codes"].get("createTask 429", 0)
    created = sorted(task["createTime"] / 1000 for task in emulator.state.task_list())
    rate = (len(created) - 1) / (created[-1] - created[0]) if len(created) > 1 else 0.0
    return refused, len(created), rate / (LIMIT / WINDOW)


def test_forty_edits_paced_together_stay_under_the_limit_and_near_it(
    limited, pace_url, source_image_url, measurement: Measurement
):
    started = time.monotonic()
    errors = submit_together(source_image_url)
    seconds = time.monotonic() - started
    refused, created, fraction = create_figures(limited)
    measurement(
        SECTION,
        f"| shared pace | {EDITS} | {refused} | {created} | {seconds:.1f} | {fraction * 100:.1f} % |",
        header=[
            f"{EDITS} edits at once, each in a thread, against {LIMIT} creates per {WINDOW:g} s:",
            "| pace | edits | createTask 429s | created | seconds | create rate against the limit |",
            "|---|---:|---:|---:|---:|---:|",
        ],
    )
    assert errors == []
    assert created == EDITS
    assert refused <= 2
    assert fraction >= 0.9


def test_without_the_pace_edits_meet_the_limit_each_alone(limited, source_image_url, monkeypatch, measurement):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")  # the pace cannot be asked: each edit backs off on 429 alone
    monkeypatch.setattr("airflow_provider_qwen.hooks.retries.RetryPolicy.wait_seconds", REAL_RETRY_WAIT)
    started = time.monotonic()
    errors = submit_together(source_image_url)
    seconds = time.monotonic() - started
    refused, created, fraction = create_figures(limited)
    measurement(
        SECTION,
        f"| none (429 backoff) | {EDITS} | {refused} | {created} ({len(errors)} edits failed) | {seconds:.1f} "
        f"| {fraction * 100:.1f} % |",
    )
    assert refused >= EDITS - LIMIT  # every create past the first window's meets a 429 at least once
