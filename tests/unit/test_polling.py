from __future__ import annotations

import pytest

from airflow_provider_qwen.emulator.script import task_record
from airflow_provider_qwen.exceptions import ApikleyAuthError, ApikleyServerError
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.triggers.apikley import POLL_CADENCE, Done, Sleep, TaskWait, TimedOut, poll_delay


def test_a_fixed_interval_is_kept_within_ten_percent_and_varies():
    delays = [poll_delay(elapsed=5.0, poll_interval=10.0) for _ in range(1000)]
    assert all(9.0 <= delay <= 11.0 for delay in delays)
    # waits that started together drift apart instead of polling in step
    assert max(delays) - min(delays) > 1.0


@pytest.mark.parametrize(("elapsed", "shortest", "longest"), [(0.0, 2, 3), (60.0, 5, 10), (600.0, 15, 30)])
def test_without_an_interval_the_cadence_follows_apikleys_advice(elapsed, shortest, longest):
    delays = [poll_delay(elapsed) for _ in range(200)]
    assert all(shortest <= delay <= longest for delay in delays)
    assert len(set(delays)) > 1


def test_the_cadence_ends_at_infinity():
    assert POLL_CADENCE[-1][0] == float("inf")


def record_in(state: str):
    return TaskRecord.from_api(task_record("task-1", state))


def test_a_wait_sleeps_until_the_task_ends_then_is_done():
    wait = TaskWait("t1", submitted_at=0.0, deadline=100.0, poll_interval=10.0)
    step = wait.after(record_in("generating"), now=5.0)
    assert isinstance(step, Sleep) and 9.0 <= step.seconds <= 11.0
    assert wait.after(record_in("generating"), now=97.0) == Sleep(3.0)  # never past the deadline
    done = wait.after(record_in("success"), now=98.0)
    assert isinstance(done, Done) and done.record.state.value == "success"


def test_a_wait_times_out_at_its_deadline_naming_the_last_state():
    wait = TaskWait("t1", submitted_at=0.0, deadline=100.0)
    step = wait.after(record_in("queuing"), now=100.0)
    assert isinstance(step, TimedOut)
    assert "t1" in step.message and "last state: queuing" in step.message


def test_a_wait_backs_off_transient_errors_until_too_many_in_a_row():
    wait = TaskWait("t1", submitted_at=0.0, max_consecutive_poll_errors=3)
    assert isinstance(wait.after(ApikleyServerError("500"), now=1.0), Sleep)
    assert isinstance(wait.after(record_in("generating"), now=2.0), Sleep)  # a success resets the count
    assert isinstance(wait.after(ApikleyServerError("500"), now=3.0), Sleep)
    assert isinstance(wait.after(ApikleyServerError("500"), now=4.0), Sleep)
    with pytest.raises(ApikleyServerError):
        wait.after(ApikleyServerError("500 again"), now=5.0)
    with pytest.raises(ApikleyAuthError):  # a refusal ends any wait at once
        TaskWait("t2", submitted_at=0.0).after(ApikleyAuthError("401"), now=1.0)
