from __future__ import annotations

import logging

import pytest

from airflow_provider_qwen.emulator.script import task_record
from airflow_provider_qwen.exceptions import ApikleyAuthError, ApikleyServerError
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.waits import POLL_CADENCE, Done, ExpectedDurations, Sleep, TaskWait, TimedOut, poll_delay


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


def test_the_first_query_waits_until_an_answer_is_due_and_never_twice():
    wait = TaskWait("t1", submitted_at=100.0, deadline=200.0, expected_duration=30.0)
    assert wait.first_query_delay(now=100.0) == 30.0
    assert wait.first_query_delay(now=125.0) == 5.0  # a wait that starts over counts from the submit
    assert wait.first_query_delay(now=140.0) == 0.0
    assert TaskWait("t2", submitted_at=100.0, deadline=110.0, expected_duration=30.0).first_query_delay(100.0) == 10.0


def test_after_the_due_time_the_advised_cadence_starts_afresh():
    wait = TaskWait("t1", submitted_at=0.0, expected_duration=60.0)
    step = wait.after(record_in("generating"), now=61.0)
    assert isinstance(step, Sleep) and 2.0 <= step.seconds <= 3.0  # not the 5-10 s of a task a minute old


def finished_after(seconds: float, model: str = "qwen/image-to-image") -> TaskRecord:
    data = task_record("task-1", "success", model=model)
    data["createTime"] = data["completeTime"] - int(seconds * 1000)
    return TaskRecord.from_api(data)


def test_expected_durations_are_learned_per_connection_and_model():
    durations = ExpectedDurations(percentile=0.75, minimum_samples=4)
    for seconds in (10, 20, 30):
        durations.note("apikley_default", finished_after(seconds))
    assert durations.expected("apikley_default", "qwen/image-to-image") == 0.0  # too few to go by
    durations.note("apikley_default", finished_after(40))
    assert durations.expected("apikley_default", "qwen/image-to-image") == 40.0
    assert durations.expected("apikley_default", "other/model") == 0.0
    assert durations.expected("other_connection", "qwen/image-to-image") == 0.0


def test_expected_durations_keep_the_newest_samples():
    durations = ExpectedDurations(samples=4, percentile=0.0, minimum_samples=1)
    for seconds in (1, 50, 60, 70, 80):
        durations.note("c", finished_after(seconds))
    assert durations.expected("c", "qwen/image-to-image") == 50.0  # the 1 s task was forgotten


def test_each_state_change_is_logged_once_with_the_time_since_submitting(caplog):
    wait = TaskWait("t1", submitted_at=100.0, poll_interval=1.0)
    with caplog.at_level(logging.INFO):
        for state, now in [("waiting", 101), ("waiting", 102), ("queuing", 104), ("generating", 107)]:
            wait.after(record_in(state), now=float(now))
        wait.after(record_in("success"), now=118.0)
    assert [record.getMessage() for record in caplog.records] == [
        "Apikley task t1 is waiting, 1 s after submitting",
        "Apikley task t1 is queuing, 4 s after submitting",
        "Apikley task t1 is generating, 7 s after submitting",
        "Apikley task t1 is success, 18 s after submitting",
    ]


def test_a_failed_query_says_how_many_more_may_fail(caplog):
    wait = TaskWait("t1", submitted_at=0.0, max_consecutive_poll_errors=10)
    with caplog.at_level(logging.WARNING):
        wait.after(ApikleyServerError("Server error"), now=1.0)
        wait.after(ApikleyServerError("Server error"), now=2.0)
    messages = [record.getMessage() for record in caplog.records]
    assert "1 of 9 failures in a row allowed" in messages[0] and "2 of 9" in messages[1]
    assert "asking again in" in messages[0]
