"""A whole catalog in one task: checked before paying, submitted at the account's rate, resumed without paying twice."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import tracemalloc
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
import structlog

from airflow.providers.common.compat.sdk import TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_qwen.batch_ledger import LEDGER_PAGE, BatchLedger, LedgerEntry
from airflow_provider_qwen.batch_manifest import MAX_RECORD_BYTES, read_batch_manifest
from airflow_provider_qwen.emulator.script import envelope
from airflow_provider_qwen.exceptions import (
    ApikleyConnectionError,
    ApikleyError,
    ApikleyInputError,
    ApikleyOrphanedIntentError,
    ApikleyUnreadableStateError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.operators.batch import CreateRateLimiter, QwenImageToImageBatchOperator
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger
from tests.conftest import API_KEY, submit_edit


class FakeStateStore(dict):
    """Airflow 3.3's task state store, as the operator uses it."""

    def set(self, key, value):
        self[key] = value


class Journal(FakeStateStore):
    """A task state store that keeps the key and size (as JSON, the way Airflow measures a value) of each write."""

    def __init__(self, *args):
        super().__init__(*args)
        self.writes: list[tuple[str, int]] = []

    def set(self, key, value):
        self.writes.append((key, len(json.dumps(value))))
        super().set(key, value)


def make_batch(image_url: str, items: int = 3, **overrides) -> QwenImageToImageBatchOperator:
    inputs = [{"prompt": f"variation {n}", "image_url": image_url, "seed": n} for n in range(items)]
    arguments = {"task_id": "batch", "inputs": inputs, "poll_interval": 0.01, "expected_duration": 0.0}
    return QwenImageToImageBatchOperator(**{**arguments, **overrides})


def task_instance(map_index: int = -1, try_number: int = 1, **fields) -> mock.Mock:
    return mock.Mock(
        dag_id="catalog",
        run_id="manual__2026-12-03T18:00:00+00:00",
        task_id="batch",
        map_index=map_index,
        try_number=try_number,
        **{"start_date": None, **fields},
    )


def context(store: FakeStateStore | None = None, try_number: int = 1, **ti_fields) -> dict:
    return {"ti": task_instance(try_number=try_number, **ti_fields), "task_state_store": store}


def deferred(
    operator: QwenImageToImageBatchOperator, store: FakeStateStore | None = None, try_number: int = 1, **ti_fields
) -> ApikleyBatchTrigger:
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(context(store, try_number, **ti_fields))
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


def test_the_limiter_waits_until_a_whole_burst_fits_in_the_window():
    now = [100.0]
    limiter = CreateRateLimiter(
        3, 10.0, clock=lambda: now[0], sleep=lambda seconds: now.__setitem__(0, now[0] + seconds)
    )
    for _ in range(3):
        limiter.wait()
        limiter.created()
        now[0] += 1  # created at 100, 101 and 102
    limiter.wait(2)  # the two oldest must leave: at 111
    assert now[0] == 111.0
    limiter.wait(5)  # never more than the window holds: all three must leave
    assert now[0] == 112.0


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
    saved = BatchLedger(store).load(3)
    assert {index: entry.apikley_task_id for index, entry in saved.items()} == dict(enumerate(apikley.state.tasks))
    assert [[entry.apikley_task_id, entry.submitted_at] for entry in saved.values()] == trigger.tasks


def test_a_retry_resumes_the_batch_and_pays_only_for_the_items_never_submitted(apikley, source_image_url):
    store = FakeStateStore()
    earlier = [task_id for task_id, *_ in deferred(make_batch(source_image_url, items=2), store).tasks]

    trigger = deferred(make_batch(source_image_url, items=4), store, try_number=2)

    assert [task_id for task_id, *_ in trigger.tasks][:2] == earlier
    assert apikley.state.accepted_creates == 2 + 2
    assert sent_seeds(apikley) == [0, 1, 2, 3]


def test_a_first_try_does_not_read_the_ledger(source_image_url):
    store = mock.Mock(get=mock.Mock(side_effect=AssertionError("a first try has no earlier try to resume")))
    deferred(make_batch(source_image_url, items=2), store, try_number=1)
    assert [call.args[0] for call in store.set.call_args_list] == [
        "apikley_batch/0",  # the intents
        "apikley_batch/created/0",  # each task id as it comes
        "apikley_batch/created/1",
        "apikley_batch/0",  # the task ids where they belong
    ]


def test_the_ledger_reads_back_each_page_as_saved_and_no_write_grows_with_the_batch():
    store = Journal()
    ledger = BatchLedger(store, generation=3, count=3 * LEDGER_PAGE)
    entries = {index: LedgerEntry(f"{index:032x}", 1.0, "f" * 32) for index in range(3 * LEDGER_PAGE)}
    for start in range(0, 3 * LEDGER_PAGE, 20):
        ledger.save(range(start, start + 20), entries)
    assert BatchLedger(store).load(3 * LEDGER_PAGE) == entries
    assert max(size for _, size in store.writes) < LEDGER_PAGE * 100  # one page at most, whatever the batch's size
    assert {key.split("/")[1] for key, _ in store.writes} == {"0", "1", "2"}
    assert BatchLedger(None).load(LEDGER_PAGE + 5) == {}


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
    # each named after its source and index; the Apikley task id stays in the result
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shoe-0.png", "shoe-2.png"]
    assert results[0]["stored"][0]["uri"] == f"file://{tmp_path}/shoe-0.png"
    assert [result["apikley_task_id"] for result in results] == [task_ids[0], "t-failed", task_ids[1]]
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


async def run_large(operator, tmp_path, store=None, try_number=1):
    trigger = deferred(operator, store, try_number)
    event = await fire(trigger)
    return trigger, event, operator.execute_complete(context(store, try_number), event)


async def test_a_large_batch_carries_counts_not_items_and_returns_its_manifest(
    apikley, source_image_url, tmp_path, large
):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    trigger, event, summary = await run_large(operator, tmp_path)

    folder = batch_folder(tmp_path)
    assert trigger.tasks == [] and (trigger.folder, trigger.count) == (f"file://{folder}", 5)
    assert "apikley_task_id" not in str(trigger.serialize()) and len(str(trigger.serialize())) < 1024
    assert event == {
        "status": "done",
        "folder": f"file://{folder}",
        "count": 5,
        "generation": 1,
        "states": {"success": 5},
    }
    assert summary == {
        "schema_version": 2,
        "items": 5,
        "states": {"success": 5, "failed": 0, "timeout": 0, "error": 0, "missing": 0},
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
        *(f"created-00{slot}.jsonl" for slot in range(5)),  # a slot per create of the (one) burst
        *(f"ended-0000{page}.jsonl" for page in range(3)),
        *(f"submitted-0000{page}.jsonl" for page in range(3)),
    ]


async def test_a_restarted_trigger_asks_only_about_the_pages_it_had_not_finished(
    apikley, source_image_url, tmp_path, large
):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    trigger, first, _ = await run_large(operator, tmp_path)
    folder = batch_folder(tmp_path)
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


#: The start of the SHA-256 of the run id of the tests' context, which names its batch folder.
RUN_ID_HASH = "8ae281acbb32ef3b"


def hashed(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def folder_of(operator, **ti) -> str:
    """The URI of the folder ``operator`` keeps a large batch in, for a task instance with ``ti``'s ids."""
    ids = {"dag_id": "catalog", "run_id": "manual__2026-12-03T18:00:00+00:00", "task_id": "batch", "map_index": -1}
    return operator._batch_folder({"ti": mock.Mock(**{**ids, **ti})}).uri


def test_a_batch_folder_name_cannot_climb_out_of_output_path(tmp_path, large, source_image_url):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    folder = folder_of(operator, dag_id="..", run_id="../../etc", task_id="a/b", map_index=0)
    assert folder == (
        f"file://{tmp_path}/_apikley_batch/_-{hashed('..')}/_.._etc-{hashed('../../etc')}/a_b-{hashed('a/b')}/0"
    )


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param(
            [{"run_id": "manual__2026-01-01T00:00:00+00:00"}, {"run_id": "manual__2026-01-01T00_00_00_00_00"}],
            id="run-ids-alike-once-cleaned",
        ),
        pytest.param([{"dag_id": "caf\u00e9"}, {"dag_id": "caf_"}], id="dag-ids-alike-once-cleaned"),
        pytest.param([{"task_id": "\u00e9dit"}, {"task_id": "_dit"}], id="task-ids-alike-once-cleaned"),
        pytest.param([{"run_id": "r" * 200 + "a"}, {"run_id": "r" * 200 + "b"}], id="long-run-ids"),
    ],
)
def test_two_task_instances_never_share_a_batch_folder(tmp_path, large, source_image_url, ids):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    first, second = (folder_of(operator, **names) for names in ids)
    assert first != second
    assert all(len(part.encode()) <= 255 for part in first.split("/") + second.split("/"))


def test_a_batch_folder_keeps_clean_dag_and_task_ids_as_they_are(tmp_path, large, source_image_url):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    assert folder_of(operator, map_index=3) == f"file://{batch_folder(tmp_path)}/3"
    assert hashed("manual__2026-12-03T18:00:00+00:00") == RUN_ID_HASH


# ---- retries: each item's latest task, paid for once ------------------------------------------------


def batch_folder(tmp_path) -> Path:
    return tmp_path / "_apikley_batch" / "catalog" / f"manual__2026-12-03T18_00_00_00_00-{RUN_ID_HASH}" / "batch"


def success(task_id: str) -> dict:
    """What the trigger reports of a task that succeeded."""
    return {
        "status": "success",
        "apikley_task_id": task_id,
        "result_urls": [f"https://files.example.org/{task_id}.png"],
    }


def fail_tasks(apikley, task_ids: list[str]) -> None:
    """Make these running tasks end in ``fail``, as Apikley's generation sometimes does."""
    for task_id in task_ids:
        apikley.state.tasks[task_id].will_fail = True


@contextmanager
def answer_lost_for_create(number: int):
    """The ``number``-th createTask (from 1) reaches Apikley, and its answer is lost on the way back."""
    real = ApikleyHook.create_task
    calls = itertools.count(1)

    def create_task(self, model, input, callback_url=None):
        task_id = real(self, model, input, callback_url)
        if next(calls) == number:
            raise ApikleyConnectionError("Connection reset by peer", request_not_sent=False)
        return task_id

    with mock.patch.object(ApikleyHook, "create_task", create_task):
        yield


@contextmanager
def captured_logs():
    """What the operator and the trigger log meanwhile, as ``(level, message)`` pairs."""
    with structlog.testing.capture_logs() as captured:
        logged: list[tuple[str, str]] = []
        yield logged
    logged.extend((entry["log_level"], entry["event"]) for entry in captured)


def sent_seeds(apikley) -> list[int]:
    return [request.json()["input"]["seed"] for request in apikley.seen("createTask")]


async def test_a_retry_submits_anew_an_item_whose_input_changed_and_names_the_task_it_replaced(
    apikley, source_image_url
):
    store = FakeStateStore()
    earlier = [task_id for task_id, *_ in deferred(make_batch(source_image_url, items=3), store).tasks]
    changed = make_batch(source_image_url, items=3)
    changed.inputs[1]["prompt"] = "another variation"

    retry = deferred(changed, store, try_number=2)

    assert apikley.state.accepted_creates == 3 + 1
    assert apikley.seen("createTask")[-1].json()["input"]["prompt"] == "another variation"
    latest = [task_id for task_id, *_ in retry.tasks]
    assert (latest[0], latest[2]) == (earlier[0], earlier[2]) and latest[1] not in earlier
    results = changed.execute_complete(context(store, 2), await fire(retry))
    assert [result["apikley_task_id"] for result in results] == latest
    assert results[1]["replaced_apikley_task_id"] == earlier[1]
    assert "replaced_apikley_task_id" not in results[0] and "replaced_apikley_task_id" not in results[2]


async def test_a_retry_resubmits_only_the_items_that_failed_timed_out_or_errored(apikley, source_image_url):
    store = FakeStateStore()
    operator = make_batch(source_image_url, items=5)
    earlier = [task_id for task_id, *_ in deferred(operator, store).tasks]
    event = {
        "status": "done",
        "tasks": [
            success(earlier[0]),
            {"status": "failed", "apikley_task_id": earlier[1], "fail_code": "501", "fail_message": "flagged"},
            {"status": "timeout", "apikley_task_id": earlier[2], "message": "did not finish"},
            {"status": "error", "apikley_task_id": earlier[3], "message": "Apikley no longer knows it"},
            success(earlier[4]),
        ],
    }
    with pytest.raises(ApikleyError, match="3 of 5 edits did not succeed"):
        operator.execute_complete(context(store), event)

    retry = make_batch(source_image_url, items=5)
    trigger = deferred(retry, store, try_number=2)

    assert sent_seeds(apikley) == [0, 1, 2, 3, 4, 1, 2, 3]
    latest = [task_id for task_id, *_ in trigger.tasks]
    assert (latest[0], latest[4]) == (earlier[0], earlier[4])
    results = retry.execute_complete(context(store, 2), await fire(trigger))
    assert [result["state"] for result in results] == ["success"] * 5
    assert [result["apikley_task_id"] for result in results] == latest
    assert [result.get("replaced_apikley_task_id") for result in results] == [None, *earlier[1:4], None]


def test_without_a_task_state_store_a_small_batch_retried_submits_every_item_anew(apikley, source_image_url):
    deferred(make_batch(source_image_url, items=2))
    deferred(make_batch(source_image_url, items=2), try_number=2)
    assert sent_seeds(apikley) == [0, 1, 0, 1]


def test_a_retry_waits_its_own_timeout_counted_from_its_own_start(apikley, source_image_url):
    store = FakeStateStore()
    deferred(make_batch(source_image_url, items=2, timeout=0.2), store)
    time.sleep(0.3)  # the first try's deadline has passed: it timed out
    started = time.time()
    retry = deferred(make_batch(source_image_url, items=2, timeout=0.2), store, try_number=2)
    assert apikley.state.accepted_creates == 2
    assert retry.deadline >= started + 0.2


def test_a_batch_waits_no_longer_than_its_execution_timeout_allows(apikley, source_image_url):
    started = datetime.now(UTC) - timedelta(seconds=50)
    operator = make_batch(source_image_url, items=2, execution_timeout=timedelta(seconds=60))
    trigger = deferred(operator, start_date=started)
    assert trigger.deadline == pytest.approx((started + timedelta(seconds=60)).timestamp())


@pytest.mark.parametrize("with_store", [False, True], ids=["no task state store", "task state store"])
async def test_a_large_batch_retried_after_failures_pays_only_for_them_and_reports_the_latest_tasks(
    apikley, source_image_url, tmp_path, large, with_store
):
    store = FakeStateStore() if with_store else None
    apikley.configure(latency=(0.3, 0.0, 0.02))  # time to mark two of them to fail before they generate
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    first = deferred(operator, store)
    earlier = list(apikley.state.tasks)
    fail_tasks(apikley, [earlier[1], earlier[4]])
    with pytest.raises(ApikleyError, match="2 of 5 edits did not succeed"):
        operator.execute_complete(context(store), await fire(first))
    apikley.configure(latency=(0.0, 0.0, 0.02))

    retry = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    _, event, summary = await run_large(retry, tmp_path, store, try_number=2)

    assert sent_seeds(apikley) == [0, 1, 2, 3, 4, 1, 4]
    assert event["states"] == {"success": 5}
    assert summary["schema_version"] == 2
    assert summary["states"] == {"success": 5, "failed": 0, "timeout": 0, "error": 0, "missing": 0}
    records = list(read_batch_manifest(summary["manifest"]))
    new = list(apikley.state.tasks)[5:]
    assert [record["apikley_task_id"] for record in records] == [earlier[0], new[0], earlier[2], earlier[3], new[1]]
    assert [record.get("replaced_apikley_task_id") for record in records] == [None, earlier[1], None, None, earlier[4]]
    assert {record["state"] for record in records} == {"success"}
    assert {record["schema_version"] for record in records} == {2}


@pytest.mark.parametrize(
    "items, with_store",
    [(3, True), (5, False), (5, True)],
    ids=["small, task state store", "large, no task state store", "large, task state store"],
)
def test_an_item_whose_create_may_have_been_paid_is_resubmitted_with_a_warning_naming_it(
    apikley, source_image_url, tmp_path, large, items, with_store
):
    store = FakeStateStore() if with_store else None
    arguments = {"items": items, "output_path": f"file://{tmp_path}"}
    with answer_lost_for_create(3), pytest.raises(ApikleyConnectionError):
        make_batch(source_image_url, **arguments).execute(context(store))
    assert apikley.state.accepted_creates == 3  # the third was created, and its id never came back

    with captured_logs() as logged:
        deferred(make_batch(source_image_url, **arguments), store, try_number=2)

    assert sent_seeds(apikley) == [0, 1, 2, *range(2, items)]
    (warning,) = [(level, message) for level, message in logged if "inputs[2]" in message]
    assert warning[0] == "warning" and "charged a second time" in warning[1]


def test_on_orphaned_intent_fail_stops_a_retry_before_it_creates_anything(apikley, source_image_url, tmp_path):
    store = FakeStateStore()
    with answer_lost_for_create(2), pytest.raises(ApikleyConnectionError):
        make_batch(source_image_url, items=3).execute(context(store))
    with pytest.raises(ApikleyOrphanedIntentError, match=r"inputs\[1\].*on_orphaned_intent='fail'"):
        make_batch(source_image_url, items=3, on_orphaned_intent="fail").execute(context(store, 2))
    assert len(apikley.seen("createTask")) == 2


def test_on_orphaned_intent_is_checked_before_any_request(apikley, source_image_url):
    with pytest.raises(ApikleyInputError, match=r"on_orphaned_intent='ignore': must be one of resubmit, fail"):
        make_batch(source_image_url, on_orphaned_intent="ignore").execute(context())
    assert apikley.seen() == []


def test_a_create_apikley_refused_leaves_no_intent_behind(apikley, source_image_url):
    store = FakeStateStore()
    apikley.script("createTask", envelope(code=200, data={"taskId": "a" * 32}), envelope(code=402, msg="Credits"))
    with pytest.raises(ApikleyError, match="Credits"):
        make_batch(source_image_url, items=3).execute(context(store))
    deferred(make_batch(source_image_url, items=3, on_orphaned_intent="fail"), store, try_number=2)
    assert sent_seeds(apikley) == [0, 1, 1, 2]


def test_each_create_is_preceded_by_its_saved_intent_and_followed_by_its_noted_task_id(apikley, source_image_url):
    saved_around_creates: list[tuple[dict, int]] = []

    class Snapshots(FakeStateStore):
        def set(self, key, value):
            super().set(key, json.loads(json.dumps(value)))
            saved_around_creates.append((dict(self), apikley.state.accepted_creates))

    operator = make_batch(source_image_url, items=6, creates_per_window=3, window_seconds=0.2)
    trigger = deferred(operator, Snapshots())

    assert len(saved_around_creates) <= 6 + 2 + 1  # a write per create, one per burst, and the last burst's ids
    loads = [(BatchLedger(FakeStateStore(saved)).load(6), creates) for saved, creates in saved_around_creates]
    for index in range(6):
        # the (index + 1)-th create was sent after a write that held its intent, and its task id was
        # written before the next create was sent
        intents_at = [
            creates for loaded, creates in loads if (entry := loaded.get(index)) and not entry.apikley_task_id
        ]
        assert intents_at and min(intents_at) <= index, index
        task_ids_at = [creates for loaded, creates in loads if (entry := loaded.get(index)) and entry.apikley_task_id]
        assert min(task_ids_at) == index + 1, index
    last, _ = saved_around_creates[-1]
    assert [entry.apikley_task_id for entry in BatchLedger(FakeStateStore(last)).load(6).values()] == [
        task_id for task_id, *_ in trigger.tasks
    ]


def test_a_ledger_page_in_the_task_state_store_that_cannot_be_parsed_is_an_error_naming_it(apikley, source_image_url):
    store = FakeStateStore({"apikley_batch/0": {"0": "not an entry"}})
    with pytest.raises(ApikleyUnreadableStateError, match=r"apikley_batch/0.*must be an object"):
        make_batch(source_image_url).execute(context(store, try_number=2))
    assert apikley.seen() == []


def test_a_submitted_page_that_cannot_be_parsed_is_an_error_naming_it(apikley, source_image_url, tmp_path, large):
    deferred(make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}"))
    page = batch_folder(tmp_path) / "submitted-00001.jsonl"
    page.write_text('{"index": 2, "apikley_task_id": \n')
    with pytest.raises(ApikleyError, match=re.escape(str(page))):
        make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}").execute(context(try_number=2))
    assert apikley.state.accepted_creates == 5


async def test_a_malformed_ended_page_is_waited_for_again_not_trusted(apikley, source_image_url, tmp_path, large):
    trigger, first, _ = await run_large(
        make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}"), tmp_path
    )
    (batch_folder(tmp_path) / "ended-00001.jsonl").write_text('{"index": 2, "status": "success"}\n')
    asked = len(apikley.seen("recordInfo"))
    with captured_logs() as logged:
        assert await fire(ApikleyBatchTrigger(**trigger.serialize()[1])) == first
    assert len(apikley.seen("recordInfo")) - asked == 2
    assert [level for level, message in logged if "ended-00001.jsonl" in message] == ["warning"]


async def test_an_ended_page_with_an_over_long_line_counts_as_not_written(apikley, source_image_url, tmp_path, large):
    trigger, first, _ = await run_large(
        make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}"), tmp_path
    )
    page = batch_folder(tmp_path) / "ended-00001.jsonl"
    with page.open("wb") as file:
        file.truncate(100 * 1024 * 1024)  # one line of 100 MB (sparse on disk)
    asked = len(apikley.seen("recordInfo"))
    with captured_logs() as logged:
        assert await fire(ApikleyBatchTrigger(**trigger.serialize()[1])) == first
    assert len(apikley.seen("recordInfo")) - asked == 2  # its two items waited for again
    assert [message for level, message in logged if level == "warning"] == [
        f"The batch page file://{page} cannot be read: file://{page} line 1 is longer than 1048576 bytes, "
        "the most a record may be; its items are waited for again"
    ]


def test_a_manifest_line_is_read_no_further_than_the_record_limit(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    with manifest.open("wb") as file:
        file.write(b'{"index": 0}\n')
        file.truncate(100 * 1024 * 1024)  # then a line of 100 MB, sparse on disk
    records = read_batch_manifest(f"file://{tmp_path}")
    tracemalloc.start()
    try:
        assert next(records) == {"index": 0}
        with pytest.raises(ApikleyError, match=r"^file://.*/manifest\.jsonl line 2 is longer than 1048576 bytes"):
            next(records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_a_record_of_the_most_bytes_allowed_is_read(tmp_path):
    record = {"input": {"prompt": "x" * (MAX_RECORD_BYTES - len('{"input":{"prompt":""}}'))}}
    line = json.dumps(record, separators=(",", ":")).encode()
    assert len(line) == MAX_RECORD_BYTES
    (tmp_path / "manifest.jsonl").write_bytes(line + b"\n" + b'{"index": 1}')
    assert list(read_batch_manifest(f"file://{tmp_path}/manifest.jsonl")) == [record, {"index": 1}]


async def test_items_without_an_outcome_fail_the_task_naming_them_and_a_retry_waits_for_them_again(
    apikley, source_image_url, tmp_path, large
):
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}")
    trigger = deferred(operator)
    event = await fire(trigger)
    (batch_folder(tmp_path) / "ended-00001.jsonl").write_text("garbage\n")
    with pytest.raises(ApikleyError, match=r"2 of 5 items have no outcome: inputs\[2\], inputs\[3\]"):
        operator.execute_complete(context(), event)
    records = list(read_batch_manifest(batch_folder(tmp_path) / "manifest.jsonl"))
    assert [record["state"] for record in records] == ["success", "success", "missing", "missing", "success"]

    _, _, summary = await run_large(
        make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}"), tmp_path, try_number=2
    )
    assert summary["states"] == {"success": 5, "failed": 0, "timeout": 0, "error": 0, "missing": 0}
    assert apikley.state.accepted_creates == 5


async def test_an_earlier_trys_trigger_never_waits_for_the_pages_a_later_try_wrote(
    apikley, source_image_url, tmp_path, large
):
    arguments = {"items": 5, "output_path": f"file://{tmp_path}"}
    earlier = deferred(make_batch(source_image_url, **arguments))
    deferred(make_batch(source_image_url, **arguments), try_number=2)
    with pytest.raises(ApikleyError, match=r"submitted-00000\.jsonl was written by try 2, not by try 1"):
        await fire(earlier)


async def test_a_submitted_page_with_an_item_the_trigger_cannot_wait_for_fails_it_naming_the_page(
    apikley, source_image_url, tmp_path, large
):
    trigger = deferred(make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}"))
    page = batch_folder(tmp_path) / "submitted-00001.jsonl"
    page.write_text('{"apikley_task_id": null, "submitted_at": 1.0, "generation": 1}\n')
    with pytest.raises(ApikleyError, match=re.escape(f"{page} holds an item with no task to wait for")):
        await fire(trigger)


async def test_a_failed_item_apikley_charged_for_reports_what_it_cost(apikley, source_image_url):
    missing = source_image_url.replace("shoe.png", "no-such-shoe.png")
    operator = QwenImageToImageBatchOperator(
        task_id="batch",
        inputs=[{"prompt": "sepia", "image_url": source_image_url}, {"prompt": "sepia", "image_url": missing}],
        poll_interval=0.01,
        expected_duration=0.0,
    )
    before = apikley.state.credits
    event = await fire(deferred(operator))
    with pytest.raises(ApikleyError, match=r"the 1 that did not succeed were charged 1 credits") as excinfo:
        operator.execute_complete(context(), event)
    assert before - apikley.state.credits == 2
    assert re.search(r"inputs\[1\] \(Apikley task \w+\) failed \w+ \(1 credits charged\)", str(excinfo.value))

    operator.max_failed_fraction = 1.0
    results = operator.execute_complete(context(), event)
    assert [(result["state"], result["credits_consumed"]) for result in results] == [("success", 1), ("failed", 1)]


def outlet_events() -> OutletEventAccessors:
    """What a worker's context holds under ``outlet_events``: Airflow's accessor per outlet, with its ``extra``."""
    return OutletEventAccessors()


async def test_items_are_named_after_their_source_and_index_and_repeats_never_share_a_file(
    apikley, source_image_url, tmp_path
):
    from airflow.providers.common.compat.sdk import Asset

    asset = Asset("file:///edits")
    inputs = [{"prompt": "sepia", "image_url": source_image_url, "seed": n} for n in range(3)]
    operator = QwenImageToImageBatchOperator(
        task_id="batch",
        inputs=inputs,
        output_path=f"file://{tmp_path}/edits",
        result_name="{source_stem}",
        poll_interval=0.01,
        expected_duration=0.0,
        outlets=[asset],
    )
    event = await fire(deferred(operator))
    events = outlet_events()
    results = operator.execute_complete({**context(), "outlet_events": events}, event)
    names = [result["stored"][0]["uri"].rsplit("/", 1)[-1] for result in results]
    assert names == ["shoe.png", "shoe-2.png", "shoe-3.png"]  # in input order, the same every time
    assert len({result["apikley_task_id"] for result in results}) == 3
    assert events[asset].extra == {"result_uris": [f"file://{tmp_path}/edits/{name}" for name in names]}


async def test_by_default_each_item_is_named_after_its_source_and_its_index(apikley, source_image_url, tmp_path):
    operator = make_batch(source_image_url, items=2, output_path=f"file://{tmp_path}")
    results = operator.execute_complete(context(), await fire(deferred(operator)))
    assert [result["stored"][0]["uri"] for result in results] == [
        f"file://{tmp_path}/shoe-0.png",
        f"file://{tmp_path}/shoe-1.png",
    ]


def test_a_batch_result_name_that_cannot_name_a_file_is_refused_before_paying(apikley, source_image_url, tmp_path):
    operator = make_batch(source_image_url, output_path=f"file://{tmp_path}", result_name="{item}")
    with pytest.raises(ApikleyInputError, match=r"result_name='\{item\}': must be a template .*\(it uses \{item\}\)"):
        operator.execute(context())
    assert apikley.seen("createTask") == []


async def test_a_large_batchs_asset_event_carries_its_manifest(apikley, source_image_url, tmp_path, large):
    from airflow.providers.common.compat.sdk import Asset

    asset = Asset("file:///edits")
    operator = make_batch(source_image_url, items=5, output_path=f"file://{tmp_path}", outlets=[asset])
    event = await fire(deferred(operator))
    events = outlet_events()
    summary = operator.execute_complete({**context(), "outlet_events": events}, event)
    assert events[asset].extra == {"manifest_uri": summary["manifest"]}
    names = sorted(item["stored"][0]["uri"].rsplit("/", 1)[-1] for item in read_batch_manifest(summary["manifest"]))
    assert names == [f"shoe-{n}.png" for n in range(5)]
