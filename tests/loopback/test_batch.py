"""A whole catalog in one task: checked before paying, submitted at the account's rate, resumed without paying twice."""

from __future__ import annotations

import time
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.emulator.script import envelope
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyInputError
from airflow_provider_qwen.operators.batch import (
    LEDGER_PAGE,
    BatchLedger,
    CreateRateLimiter,
    QwenImageToImageBatchOperator,
)
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger
from tests.conftest import API_KEY, submit_edit


class FakeStateStore(dict):
    """Airflow 3.3's task state store, as the operator uses it."""

    def set(self, key, value):
        self[key] = value


def make_batch(image_url: str, items: int = 3, **overrides) -> QwenImageToImageBatchOperator:
    inputs = [{"prompt": f"variation {n}", "image_url": image_url, "seed": n} for n in range(items)]
    arguments = {"task_id": "batch", "inputs": inputs, "poll_interval": 0.01, "expected_duration": 0.0}
    return QwenImageToImageBatchOperator(**{**arguments, **overrides})


def deferred(
    operator: QwenImageToImageBatchOperator, store: FakeStateStore | None = None, try_number: int = 1
) -> ApikleyBatchTrigger:
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute({"ti": mock.Mock(try_number=try_number), "task_state_store": store})
    return excinfo.value.trigger


async def fire(trigger: ApikleyBatchTrigger) -> dict:
    (event,) = [event.payload async for event in trigger.run()]
    return event


def test_every_item_is_checked_before_anything_is_sent(apikley, source_image_url):
    inputs = [
        {"prompt": "fine", "image_url": source_image_url},
        {"prompt": "", "image_url": source_image_url},
        "not a dict",
        {"prompt": "fine", "image_url": "ftp://x", "strength": 3},
    ]
    with pytest.raises(ApikleyInputError) as excinfo:
        QwenImageToImageBatchOperator(task_id="batch", inputs=inputs).execute({"ti": mock.Mock()})
    message = str(excinfo.value)
    assert "inputs[0]" not in message
    assert "inputs[1]" in message and "prompt=''" in message
    assert "inputs[2]: must be a dict of input fields, got str" in message
    assert "inputs[3]" in message and "strength=3" in message and "image_url='ftp://x'" in message
    assert apikley.seen() == []


def test_a_callback_url_or_output_path_that_would_fail_later_fails_before_paying(apikley, source_image_url, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ApikleyInputError, match=r"callback_url='/apikley/callback': .*\[api\] base_url"):
        make_batch(source_image_url, callback_url="/apikley/callback").execute({"ti": mock.Mock()})
    with pytest.raises(ApikleyInputError, match=r"output_path=.*a-file/edits': must be a folder"):
        make_batch(source_image_url, output_path=f"file://{tmp_path}/a-file/edits").execute({"ti": mock.Mock()})
    assert apikley.seen() == []


def test_the_limiter_allows_a_window_of_creates_then_waits_for_the_oldest_to_leave_it():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))
        now[0] += seconds

    limiter = CreateRateLimiter(3, 10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
        limiter.created()
        now[0] += 1
    assert slept == []
    limiter.wait()  # the first of three, at 100, leaves the window at 110
    assert slept == [7.0] and now[0] == 110.0
    limiter.created()
    limiter.back_off(4.0)
    limiter.wait()
    assert slept == [7.0, 4.0]


def test_a_batch_is_submitted_at_the_accounts_rate_without_a_single_429(apikley, source_image_url):
    apikley.configure(create_rate_limit=3, create_rate_window=0.5)
    started = time.monotonic()
    trigger = deferred(make_batch(source_image_url, items=7, creates_per_window=3, window_seconds=0.5))
    assert time.monotonic() - started >= 1.0  # 3 at once, 3 after 0.5 s, 1 after 1 s
    assert [task_id for task_id, _ in trigger.tasks] == list(apikley.state.tasks)
    assert apikley.state.accepted_creates == 7
    assert not any(key.startswith("createTask 429") for key in apikley.stats()["api_codes"])


def test_a_429_slows_the_batch_down_and_drops_no_item(apikley, source_image_url):
    apikley.script("createTask", envelope(code=429, msg="Too many requests", times=4))
    trigger = deferred(make_batch(source_image_url, items=3))
    assert len(trigger.tasks) == 3 == apikley.state.accepted_creates
    assert len(apikley.seen("createTask")) == 3 + 4


def test_each_task_id_is_saved_as_soon_as_it_exists(apikley, source_image_url):
    store = FakeStateStore()
    trigger = deferred(make_batch(source_image_url, items=3), store)
    assert BatchLedger(store).load() == {index: tuple(task) for index, task in enumerate(trigger.tasks)}


def test_a_retry_resumes_the_batch_and_pays_only_for_the_items_never_submitted(apikley, source_image_url):
    earlier = [submit_edit(source_image_url, seed=n) for n in range(2)]
    store = FakeStateStore()
    ledger = BatchLedger(store)
    submitted = {0: (earlier[0], time.time()), 1: (earlier[1], time.time())}
    ledger.record(1, submitted)

    trigger = deferred(make_batch(source_image_url, items=4), store, try_number=2)

    assert [task_id for task_id, _ in trigger.tasks][:2] == earlier
    assert apikley.state.accepted_creates == 2 + 2
    assert [request.json()["input"]["seed"] for request in apikley.seen("createTask")] == [0, 1, 2, 3]


def test_a_first_try_does_not_read_the_ledger(source_image_url):
    store = mock.Mock(get=mock.Mock(side_effect=AssertionError("a first try has no earlier try to resume")))
    deferred(make_batch(source_image_url, items=2), store, try_number=1)
    assert [call.args[0] for call in store.set.call_args_list] == ["apikley_batch/0", "apikley_batch/0"]


def test_the_ledger_keeps_pages_so_no_write_grows_with_the_batch():
    store = FakeStateStore()
    ledger = BatchLedger(store)
    submitted = {index: (f"task-{index}", 1.0) for index in range(LEDGER_PAGE + 5)}
    for index in submitted:
        ledger.record(index, submitted)
    assert sorted(store) == ["apikley_batch/0", "apikley_batch/1"]
    assert len(store["apikley_batch/1"]) == 5
    assert ledger.load() == submitted
    assert BatchLedger(None).load() == {}


async def test_one_trigger_waits_for_all_asking_about_each_once_when_its_answer_is_due(apikley, source_image_url):
    apikley.configure(latency=(0.0, 0.0, 0.2), jitter=0.0)
    tasks = [[submit_edit(source_image_url, seed=n), time.time()] for n in range(5)]
    event = await fire(ApikleyBatchTrigger(tasks=tasks, expected_duration=0.4, poll_interval=0.05))
    assert event["status"] == "done"
    assert [item["apikley_task_id"] for item in event["tasks"]] == [task_id for task_id, _ in tasks]
    assert {item["status"] for item in event["tasks"]} == {"success"}
    assert len(apikley.seen("recordInfo")) == 5


async def test_a_batch_resumes_its_worker_no_sooner_than_the_settle_time_after_its_last_submit(
    apikley, source_image_url, monkeypatch
):
    settled = []

    async def record(trigger, deferred_at):
        settled.append(deferred_at)

    monkeypatch.setattr("airflow_provider_qwen.triggers.batch.settle_before_resuming", record)
    tasks = [[submit_edit(source_image_url), 100.0], [submit_edit(source_image_url), 250.0]]
    event = await fire(ApikleyBatchTrigger(tasks=tasks, expected_duration=0.0, poll_interval=0.02))
    assert event["status"] == "done"
    assert settled == [250.0]  # the deferral came after the last submit


async def test_a_failed_or_unknown_item_does_not_stop_the_others(apikley, source_image_url):
    good = submit_edit(source_image_url)
    apikley.configure(fail_fraction=1.0)
    bad = submit_edit(source_image_url)
    tasks = [[good, time.time()], [bad, time.time()], ["no-such-task", time.time()]]
    event = await fire(ApikleyBatchTrigger(tasks=tasks, expected_duration=0.0, poll_interval=0.02))
    statuses = [(item["apikley_task_id"], item["status"]) for item in event["tasks"]]
    assert statuses == [(good, "success"), (bad, "failed"), ("no-such-task", "error")]
    assert API_KEY not in str(event)


def test_results_come_back_in_input_order_and_are_stored(apikley, source_image_url, tmp_path):
    operator = make_batch(source_image_url, items=3, output_path=f"file://{tmp_path}", max_failed_fraction=0.5)
    task_ids = [apikley.wait_until_ended(submit_edit(source_image_url)).task_id for _ in range(2)]
    event = {
        "status": "done",
        "tasks": [
            {
                "status": "success",
                "apikley_task_id": task_ids[0],
                "result_urls": apikley.state.tasks[task_ids[0]].result_urls,
                "credits_consumed": 1.5,
            },
            {"status": "failed", "apikley_task_id": "t-failed", "fail_code": "501", "fail_message": "flagged"},
            {
                "status": "success",
                "apikley_task_id": task_ids[1],
                "result_urls": apikley.state.tasks[task_ids[1]].result_urls,
            },
        ],
    }
    results = operator.execute_complete({"ti": mock.Mock()}, event)
    assert [(result["index"], result["state"]) for result in results] == [(0, "success"), (1, "failed"), (2, "success")]
    assert results[1]["fail_code"] == "501" and results[1]["result_urls"] == []
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f"{task_id}-0.png" for task_id in task_ids)
    assert results[0]["stored"][0]["uri"].endswith(f"{task_ids[0]}-0.png")
    assert [result["credits_consumed"] for result in results] == [1.5, None, None]


def test_more_failures_than_the_threshold_fail_the_task_naming_them(source_image_url):
    event = {
        "status": "done",
        "tasks": [
            {"status": "success", "apikley_task_id": "t0", "result_urls": ["https://example.org/0.png"]},
            {"status": "failed", "apikley_task_id": "t1", "fail_code": "501", "fail_message": "flagged"},
            {"status": "timeout", "apikley_task_id": "t2", "message": "did not finish"},
        ],
    }
    with pytest.raises(ApikleyError) as excinfo:
        make_batch(source_image_url, max_failed_fraction=0.5).execute_complete({"ti": mock.Mock()}, event)
    message = str(excinfo.value)
    assert "2 of 3 edits did not succeed" in message
    assert "inputs[1] (Apikley task t1) failed 501: flagged" in message
    assert "inputs[2] (Apikley task t2) timeout: did not finish" in message


@pytest.mark.parametrize("event", [None, {"status": "success"}, {"status": "done", "tasks": "all"}])
def test_an_event_that_is_not_the_batch_triggers_is_an_error(event, source_image_url):
    with pytest.raises(ApikleyError, match="Expected the event of an Apikley batch trigger"):
        make_batch(source_image_url).execute_complete({"ti": mock.Mock()}, event)


def test_the_trigger_holds_json_primitives_only(source_image_url):
    trigger = ApikleyBatchTrigger(tasks=[["t1", 1.5], ["t2", 2.5]], deadline=100.0, model="qwen/image-to-image")
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_qwen.triggers.batch.ApikleyBatchTrigger"
    assert ApikleyBatchTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert kwargs["tasks"] == [["t1", 1.5], ["t2", 2.5]]


def test_an_event_that_does_not_match_the_inputs_item_for_item_is_an_error(source_image_url):
    event = {"status": "done", "tasks": [{"status": "success", "apikley_task_id": "t0", "result_urls": []}]}
    with pytest.raises(ApikleyError, match="reported 1 tasks for 3 inputs"):
        make_batch(source_image_url, items=3).execute_complete({"ti": mock.Mock()}, event)


# ---- a batch larger than what travels in XCom: its items kept as pages of a manifest -------------------


@pytest.fixture
def large(monkeypatch):
    """Batches of more than 3 items are large; pages hold 2 items (the defaults: 1,000 and 1,000)."""
    import airflow_provider_qwen.operators.batch as batch_module
    import airflow_provider_qwen.triggers.batch as trigger_module

    for module in (batch_module, trigger_module):
        monkeypatch.setattr(module, "INLINE_RESULTS_LIMIT", 3, raising=False)
        monkeypatch.setattr(module, "PAGE_ITEMS", 2, raising=False)
    monkeypatch.setattr("airflow_provider_qwen.batch_manifest.PAGE_ITEMS", 2)


def task_instance(map_index: int = -1) -> mock.Mock:
    return mock.Mock(dag_id="catalog", run_id="manual__2026-12-03T18:00:00+00:00", task_id="batch", map_index=map_index)


async def run_large(operator, tmp_path, store=None):
    context = {"ti": task_instance(), "task_state_store": store}
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(context)
    trigger = excinfo.value.trigger
    event = await fire(trigger)
    return trigger, event, operator.execute_complete(context, event)


async def test_a_large_batch_carries_counts_not_items_and_returns_its_manifest(
    apikley, source_image_url, tmp_path, large
):
    from airflow_provider_qwen.batch_manifest import read_batch_manifest

    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    trigger, event, summary = await run_large(operator, tmp_path)

    folder = tmp_path / "_apikley_batch" / "catalog" / "manual__2026-12-03T18_00_00_00_00" / "batch"
    assert trigger.tasks == [] and (trigger.folder, trigger.count) == (f"file://{folder}", 5)
    assert "apikley_task_id" not in str(trigger.serialize()) and len(str(trigger.serialize())) < 1024
    assert event == {"status": "done", "folder": f"file://{folder}", "count": 5, "states": {"success": 5}}
    assert summary == {
        "items": 5,
        "states": {"success": 5},
        "credits_consumed": 5 * apikley.state.settings.cost_per_task,
        "manifest": f"file://{folder}/manifest.jsonl",
    }
    records = list(read_batch_manifest(summary["manifest"]))
    assert [record["index"] for record in records] == [0, 1, 2, 3, 4]
    assert [record["apikley_task_id"] for record in records] == list(apikley.state.tasks)
    assert [record["input"]["seed"] for record in records] == [0, 1, 2, 3, 4]
    for record in records:
        (stored,) = record["stored"]
        assert (tmp_path / stored["uri"].rsplit("/", 1)[-1]).stat().st_size == stored["size"]
    assert sorted(path.name for path in folder.glob("*-*.jsonl")) == [
        *(f"ended-0000{page}.jsonl" for page in range(3)),
        *(f"submitted-0000{page}.jsonl" for page in range(3)),
    ]


async def test_a_restarted_trigger_asks_only_about_the_pages_it_had_not_finished(
    apikley, source_image_url, tmp_path, large
):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    trigger, first, _ = await run_large(operator, tmp_path)
    folder = tmp_path / "_apikley_batch" / "catalog" / "manual__2026-12-03T18_00_00_00_00" / "batch"
    (folder / "ended-00002.jsonl").unlink()  # the triggerer stopped before the last page ended
    asked = len(apikley.seen("recordInfo"))

    again = ApikleyBatchTrigger(**trigger.serialize()[1])
    assert await fire(again) == first
    assert len(apikley.seen("recordInfo")) - asked == 1  # the last page's one item


def test_a_large_batch_without_output_path_is_refused_before_paying(apikley, source_image_url, large):
    with pytest.raises(ApikleyInputError, match=r"inputs has 5 items: a batch of more than 3 keeps .* output_path"):
        make_batch(source_image_url, items=5).execute({"ti": task_instance()})
    assert apikley.seen() == []


async def test_a_large_batch_past_its_failure_threshold_names_the_manifest(apikley, source_image_url, tmp_path, large):
    apikley.configure(fail_fraction=1.0)
    operator = make_batch(source_image_url, items=4, output_path=f"file://{tmp_path}")
    with pytest.raises(
        ApikleyError, match=r"4 of 4 edits did not succeed.*; every item is in file://.*manifest\.jsonl"
    ):
        await run_large(operator, tmp_path)


def test_a_batch_folder_name_cannot_climb_out_of_output_path(tmp_path, large, source_image_url):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    ti = mock.Mock(dag_id="..", run_id="../../etc", task_id="a/b", map_index=0)
    folder = operator._batch_folder({"ti": ti})
    assert folder.uri == f"file://{tmp_path}/_apikley_batch/_/_.._etc/a_b/0"
