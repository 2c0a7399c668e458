"""
A batch's ledger: a retry pays once for each item, the ledger writes little per item, and a load
reads no more keys than the batch has pages, wherever the try before it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import replace
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.batch_ledger import (
    LEDGER_PAGE,
    PARTIAL_FINGERPRINT,
    BatchLedger,
    LedgerEntry,
    PageLedger,
    plan_retry,
    write_submitted_pages,
)
from airflow_provider_qwen.batch_manifest import BatchFolder, read_page, write_records
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyUnreadableStateError
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from airflow_provider_qwen.resume import request_fingerprint

IMAGE_URL = "https://images.example.org/shoe.png"


class RecordingStore(dict):
    """
    Airflow 3.3's task state store, counting the bytes of the JSON values written, and the keys
    read: pages (``reads``) and created slots (``slot_reads``) apart.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.reads = self.slot_reads = 0
        self.bytes_written = 0

    def get(self, key, default=None):
        if key.startswith("apikley_batch/created/"):
            self.slot_reads += 1
        else:
            self.reads += 1
        return super().get(key, default)

    def set(self, key, value):
        text = json.dumps(value)  # as Airflow measures a value against [state_store] max_value_storage_bytes
        self.bytes_written += len(text)
        self[key] = json.loads(text)


class Stop(BaseException):
    """The worker stops in the middle of a burst: killed, or out of time."""


def task_id(number: int) -> str:
    return f"{number:032x}"


def batch(items: int, first_task: int = 0, **overrides) -> QwenImageToImageBatchOperator:
    """A batch of ``items`` whose creates answer task ids ``first_task``, ``first_task + 1``..."""
    inputs = [{"prompt": f"catalog shot {n}", "image_url": IMAGE_URL, "seed": n} for n in range(items)]
    arguments = {"task_id": "batch", "inputs": inputs, "window_seconds": 1e-6, "max_failed_fraction": 1.0}
    operator = QwenImageToImageBatchOperator(**{**arguments, **overrides})
    answers = (task_id(number) for number in itertools.count(first_task))
    operator.__dict__["hook"] = mock.Mock(create_task=mock.Mock(side_effect=answers))
    return operator


def context(store: RecordingStore, try_number: int = 1) -> dict:
    ti = mock.Mock(dag_id="catalog", run_id="manual", task_id="batch", map_index=-1, try_number=try_number)
    ti.start_date = None
    return {"ti": ti, "task_state_store": store}


def submit(operator: QwenImageToImageBatchOperator, store: RecordingStore, try_number: int = 1) -> list:
    """Run ``execute`` to its deferral; return the trigger's tasks."""
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context(store, try_number))
    return deferred.value.trigger.tasks


def finish(operator: QwenImageToImageBatchOperator, store: RecordingStore, tasks: list, failed: set[int]) -> None:
    """Run ``execute_complete`` with every task ended, the items of ``failed`` failed."""
    payloads = [
        {"status": "failed", "apikley_task_id": task, "fail_code": "500", "fail_message": "no"}
        if index in failed
        else {"status": "success", "apikley_task_id": task, "result_urls": [f"https://x.example.org/{index}.png"]}
        for index, (task, *_) in enumerate(tasks)
    ]
    operator.execute_complete(context(store), {"status": "done", "tasks": payloads})


def fingerprints(operator: QwenImageToImageBatchOperator) -> list[str]:
    return [request_fingerprint(QWEN_IMAGE_TO_IMAGE, request, None) for request in operator.build_inputs()]


def test_a_batch_of_1000_writes_at_most_200_bytes_per_item_and_a_page_for_each_page_with_an_item_that_failed():
    store = RecordingStore()
    operator = batch(1000)  # in bursts of 20, Apikley's default create rate
    ticks = itertools.count()
    # its times as far apart as at that rate (20 creates and an intent every 10 s), which the ledger keeps
    with mock.patch("airflow_provider_qwen.operators.batch.time.time", side_effect=lambda: 1.78e9 + next(ticks) / 2):
        tasks = submit(operator, store)
    submitted = store.bytes_written
    finish(operator, store, tasks, failed={7, 450, 999})

    assert submitted <= 200 * 1000
    assert store.bytes_written - submitted <= 3 * LEDGER_PAGE * 60  # three pages rewritten, about 55 bytes an item
    assert {index for index, entry in BatchLedger(store).load(1000).items() if entry.state} == {7, 450, 999}


def test_a_retry_after_a_stop_halfway_reads_fewer_keys_than_pages_and_pays_for_the_rest_once():
    store = RecordingStore()
    stopping = batch(1000)
    stopping.hook.create_task.side_effect = [*map(task_id, range(500)), Stop()]
    with pytest.raises(Stop):
        stopping.execute(context(store))

    store.reads = 0
    retry = batch(1000, first_task=10_000)
    tasks = submit(retry, store, try_number=2)

    assert store.reads < math.ceil(1000 / LEDGER_PAGE)  # a load stops at the pages never written
    assert [task for task, *_ in tasks[:500]] == [task_id(number) for number in range(500)]
    assert retry.hook.create_task.call_count == 500


@pytest.mark.parametrize("killed_at", [0, 7, 19, 20, 513, 999])
def test_a_worker_killed_during_a_burst_leaves_a_retry_at_most_one_create_to_pay_for_again(killed_at):
    store, left_behind = RecordingStore(), RecordingStore()
    killed = batch(1000)  # in bursts of 20

    def create(*_):
        if killed.hook.create_task.call_count > killed_at:  # the create in flight when the worker is killed
            left_behind.update(json.loads(json.dumps(store)))
            raise Stop()
        return task_id(killed.hook.create_task.call_count - 1)

    killed.hook.create_task.side_effect = create
    with pytest.raises(Stop):
        killed.execute(context(store))

    retry = batch(1000, first_task=10_000)
    tasks = submit(retry, left_behind, try_number=2)

    assert retry.hook.create_task.call_count == 1000 - killed_at  # the one in flight may have been created
    assert [task for task, *_ in tasks[:killed_at]] == [task_id(number) for number in range(killed_at)]
    assert left_behind.reads <= math.ceil(1000 / LEDGER_PAGE) and left_behind.slot_reads <= 20 + 1


def test_on_object_storage_a_load_finds_the_task_ids_a_burst_cut_short_noted(tmp_path):
    with mock.patch("airflow_provider_qwen.batch_manifest.PAGE_ITEMS", 10):
        folder = BatchFolder(f"file://{tmp_path}")
        ledger = PageLedger(folder, 1, 25)
        entries = {index: LedgerEntry(None, 1.5, f"{index:032x}") for index in range(12)}
        ledger.save(range(12), entries)  # a burst's intents, across two pages
        for slot in range(5):
            entries[slot] = replace(entries[slot], apikley_task_id=task_id(slot), submitted_at=1.6)
            ledger.note_created(slot, slot, entries[slot])
        loaded = PageLedger(folder, 2).load(25)

    assert {index: entry.apikley_task_id for index, entry in loaded.items()} == {
        index: task_id(index) if index < 5 else None for index in range(12)
    }
    plan = plan_retry(loaded, [f"{index:032x}" for index in range(12)])
    assert plan.resumed == [0, 1, 2, 3, 4] and plan.orphaned == list(range(5, 12))


def test_a_slot_counts_only_for_the_intent_it_was_created_for_and_only_for_the_same_request():
    store = RecordingStore()
    ledger = BatchLedger(store, 1, 3)
    first = {index: LedgerEntry(task_id(index), 1.5, f"{index:032x}") for index in range(3)}
    for slot in range(3):
        ledger.note_created(slot, slot, first[slot])
    ledger.save(range(3), first)
    # a later try submits item 0 anew (replacing its task) and is lost before that create was answered
    later = {**first, 0: LedgerEntry(None, 2.5, "", task_id(0))}
    BatchLedger(store, 2, 3).save([0], later)

    loaded = BatchLedger(RecordingStore(store), 3).load(3)
    assert loaded[0].apikley_task_id is None  # the slot is the first try's create, not this intent's

    BatchLedger(store, 3, 3).note_created(0, 0, LedgerEntry(task_id(9), 3.5, "e" * 32, task_id(0)))
    loaded = BatchLedger(RecordingStore(store), 4).load(3)
    plan = plan_retry(loaded, ["f" * 32, f"{1:032x}", f"{2:032x}"])
    assert loaded[0].apikley_task_id == task_id(9)
    assert plan.changed == [0] and plan.replaced == {0: task_id(9)}  # sent another request: submitted anew


def test_a_retry_pays_only_for_the_items_that_ended_badly_or_whose_request_changed():
    store = RecordingStore()
    first = batch(250)
    finish(first, store, submit(first, store), failed={3, 120})

    retry = batch(250, first_task=10_000)
    retry.inputs[200]["prompt"] = "another shot"
    tasks = submit(retry, store, try_number=2)

    assert retry.hook.create_task.call_count == 3
    assert {index: task[2] for index, task in enumerate(tasks) if len(task) == 3} == {
        index: task_id(index) for index in (3, 120, 200)
    }


#: Ledger pages as the release before continuation keys wrote them: entries by index, each with its try.
PREVIOUS_RELEASE = {
    "apikley_batch/0": {
        "0": {"apikley_task_id": "a" * 32, "submitted_at": 1.5, "fingerprint": "f" * 32, "generation": 1},
        "1": {
            "apikley_task_id": "b" * 32,
            "submitted_at": 2.25,
            "fingerprint": "e" * 32,
            "generation": 2,
            "replaced_apikley_task_id": "c" * 32,
            "state": "failed",
        },
        "99": {"apikley_task_id": None, "submitted_at": 3.0, "fingerprint": "d" * 32, "generation": 2},
    },
    "apikley_batch/1": {
        "100": {"apikley_task_id": "9" * 32, "submitted_at": 4.0, "fingerprint": "0" * 32, "generation": 1}
    },
}


def test_a_ledger_the_previous_release_wrote_still_loads():
    assert BatchLedger(RecordingStore(PREVIOUS_RELEASE)).load(150) == {
        0: LedgerEntry("a" * 32, 1.5, "f" * 32),
        1: LedgerEntry("b" * 32, 2.25, "e" * 32, "c" * 32, "failed"),
        99: LedgerEntry(None, 3.0, "d" * 32),
        100: LedgerEntry("9" * 32, 4.0, "0" * 32),
    }


def previous_release_ledger(operator: QwenImageToImageBatchOperator, submitted: int) -> RecordingStore:
    """What the previous release saved once it had submitted the first ``submitted`` items of ``operator``."""
    sent = fingerprints(operator)
    pages: dict[str, dict] = {}
    for index in range(submitted):
        record = {"apikley_task_id": task_id(index), "submitted_at": 100.0 + index, "fingerprint": sent[index]}
        pages.setdefault(f"apikley_batch/{index // LEDGER_PAGE}", {})[str(index)] = {**record, "generation": 1}
    return RecordingStore(pages)


def test_a_retry_after_upgrading_pays_only_for_what_the_previous_release_did_not_submit():
    store = previous_release_ledger(batch(150), submitted=120)

    retry = batch(150, first_task=10_000)
    tasks = submit(retry, store, try_number=2)
    again = batch(150, first_task=20_000)
    tasks_again = submit(again, store, try_number=3)

    assert retry.hook.create_task.call_count == 30
    assert [task for task, *_ in tasks[:120]] == [task_id(index) for index in range(120)]
    assert again.hook.create_task.call_count == 0
    assert tasks_again == tasks


@pytest.mark.parametrize(
    "saved, key",
    [
        ({"apikley_batch/0": {"v": 1, "t": 0, "e": "0 not/a/task abc 0"}}, "apikley_batch/0"),
        ({"apikley_batch/0": {"v": 1, "t": 0, "e": "0 " + "a" * 32 + " ="}}, "apikley_batch/0"),
        ({"apikley_batch/0": {"v": 1, "e": "100"}}, "apikley_batch/0"),
        ({"apikley_batch/0": {"v": 1, "m": 1}, "apikley_batch/0/1": {"v": 1, "e": 7}}, "apikley_batch/0/1"),
        ({"apikley_batch/0": {"v": 1, "m": 1}, "apikley_batch/0/1": ["not", "an", "object"]}, "apikley_batch/0/1"),
        ({"apikley_batch/0": "not a page"}, "apikley_batch/0"),
    ],
    ids=["task id", "fingerprint without time", "entry off its page", "entries", "continuation", "page"],
)
def test_a_ledger_key_that_cannot_be_read_is_refused_naming_it_before_any_create(saved, key):
    operator = batch(3)
    with pytest.raises(ApikleyUnreadableStateError, match=rf"ledger page {key} in the task state store cannot be"):
        operator.execute(context(RecordingStore(saved), try_number=2))
    operator.hook.create_task.assert_not_called()


def test_each_page_keeps_its_own_items():
    store = RecordingStore()
    entries = {index: LedgerEntry(task_id(index), 1.0, "f" * 32) for index in range(250)}
    ledger = BatchLedger(store, count=250)
    for start in range(0, 250, 30):
        ledger.save(range(start, start + 30), entries)

    without_page_1 = {key: value for key, value in store.items() if not key.startswith("apikley_batch/1")}
    without_page_1["apikley_batch/1"] = {"v": 1}  # page 1 as if nothing had been saved on it

    assert BatchLedger(RecordingStore(without_page_1)).load(250) == {
        index: entry for index, entry in entries.items() if index // LEDGER_PAGE != 1
    }


@pytest.mark.parametrize("slot", ["0 not/a/task abc", "0", {"e": "0 abc def"}, "x " + "A" * 22 + " abc"])
def test_a_created_slot_that_cannot_be_read_is_refused_naming_it_before_any_create(slot):
    saved = {"apikley_batch/0": {"v": 1, "t": 0, "e": "0\n1\n2"}, "apikley_batch/created/0": slot}
    operator = batch(3)
    with pytest.raises(ApikleyUnreadableStateError, match=r"ledger slot apikley_batch/created/0 cannot be read"):
        operator.execute(context(RecordingStore(saved), try_number=2))
    operator.hook.create_task.assert_not_called()


# ---- wherever a try stops --------------------------------------------------------------------------


def as_retry_sees(entries: dict[int, LedgerEntry]) -> dict[int, tuple]:
    """
    What a retry acts on: an intent's replaced task; a task's id, request, time (ms) and bad end.

    A task found in a created slot (its fingerprint partial) has its intent's time, which is only
    as exact as its key keeps it: no time is compared for it.
    """
    return {
        index: ("intent", entry.replaced_apikley_task_id)
        if entry.apikley_task_id is None
        else (
            entry.apikley_task_id,
            entry.fingerprint,
            None if entry.fingerprint.startswith(PARTIAL_FINGERPRINT) else round(entry.submitted_at * 1000),
            entry.replaced_apikley_task_id,
            entry.state if entry.state != "success" else None,
        )
        for index, entry in entries.items()
    }


class CrashChecks:
    """
    After each write of a ledger, load it as a retry would: every item must read back as it was before
    the save being written or as it is after it, in no more reads than the batch has pages.

    :param count: the batch's items.
    :param folder: the batch's folder, for a ledger on object storage; else it is in a task state store.
    """

    def __init__(self, count: int, folder: BatchFolder | None = None):
        self.count, self.folder = count, folder
        self.store = None if folder else RecordingStore()
        self.before: dict | None = None
        self.after: dict = {}
        self.checked = 0
        self.burst = 0

    def ledger(self, generation: int) -> BatchLedger | PageLedger:
        if self.folder:
            return PageLedger(self.folder, generation, self.count)
        self.store.set = self.checking(self.store.set)
        return BatchLedger(self.store, generation, self.count)

    def seen_by_a_retry(self) -> dict[int, tuple]:
        if self.folder:
            with mock.patch("airflow_provider_qwen.batch_ledger.read_page", side_effect=self.counted(read_page)):
                loaded, reads, slot_reads = PageLedger(self.folder).load(self.count), self.reads, self.slot_reads
        else:
            reader = RecordingStore(self.store)
            loaded, reads, slot_reads = BatchLedger(reader).load(self.count), reader.reads, reader.slot_reads
        assert reads <= math.ceil(self.count / (self.folder.items(0).stop if self.folder else LEDGER_PAGE))
        assert slot_reads <= self.burst + 1  # the slots of a burst a lost worker cut short, and one more
        return as_retry_sees(loaded)

    def counted(self, read):
        self.reads = self.slot_reads = 0

        def counting(path):
            if path.name.startswith("created-"):
                self.slot_reads += 1
            else:
                self.reads += 1
            return read(path)

        return counting

    def checking(self, write):
        def checked_write(*args):
            write(*args)
            if self.before is not None:
                now = self.seen_by_a_retry()
                for index in now.keys() | self.before.keys() | self.after.keys():
                    assert now.get(index) in (self.before.get(index), self.after.get(index)), (args[0], index)
                self.checked += 1

        return checked_write

    def save(self, ledger, indexes: list[int], entries: dict[int, LedgerEntry]) -> None:
        self.before = self.seen_by_a_retry()
        self.after = {index: seen for index, seen in self.before.items() if index not in indexes}
        self.after |= as_retry_sees({index: entries[index] for index in indexes if index in entries})
        if self.folder:
            with mock.patch(
                "airflow_provider_qwen.batch_ledger.write_records", side_effect=self.checking(write_records)
            ):
                ledger.save(indexes, entries)
        else:
            ledger.save(indexes, entries)
        self.before = None
        assert self.seen_by_a_retry() == self.after


def a_try(checks: CrashChecks, generation: int, burst: int, pending: list[int], rng: random.Random) -> bool:
    """
    Save as the operator does (each burst's intents with the task ids of the burst before, each task
    id noted as it comes), stopped or refused at random; return whether it ended.
    """
    ledger = checks.ledger(generation)
    checks.burst = burst
    entries = ledger.load(checks.count) if generation > 1 else {}
    now = 1_780_000_000.0 + generation * 10_000
    stop_at = rng.choice([None, rng.randrange(len(pending) + 1)])
    noted: list[int] = []
    for start in range(0, len(pending), burst):
        items = pending[start : start + burst]
        before = {index: entries.get(index) for index in items}
        for index in items:
            earlier = entries.get(index)
            replaced = earlier and (earlier.apikley_task_id or earlier.replaced_apikley_task_id)
            entries[index] = LedgerEntry(None, now, f"{index:032x}", replaced)
        checks.save(ledger, [*noted, *items], entries)
        for created, index in enumerate(items):
            if start + created == stop_at:
                if rng.random() < 0.5:
                    return False  # killed: the intents stay, and the task ids noted so far
                for left in items[created:]:  # refused: nothing was created for the rest
                    entries.pop(left) if before[left] is None else entries.__setitem__(left, before[left])
                checks.save(ledger, [*noted, *items], entries)
                return False
            now += 0.037
            entries[index] = replace(entries[index], apikley_task_id=f"{rng.getrandbits(128):032x}", submitted_at=now)
            ledger.note_created(created, index, entries[index])
        noted = items
    checks.save(ledger, noted, entries)
    if checks.folder:  # every page whole, for the trigger to wait for
        write_submitted_pages(checks.folder, generation, checks.count, entries)
    return True


def retry_pending(earlier: dict[int, LedgerEntry], count: int, rng: random.Random) -> list[int]:
    """The items a retry submits: those never submitted, their intents, and some whose wait failed."""
    return [
        index
        for index in range(count)
        if index not in earlier or earlier[index].apikley_task_id is None or rng.random() < 0.05
    ]


@pytest.mark.parametrize("seed", range(8))
def test_wherever_a_try_stops_a_retry_sees_each_item_as_before_or_after_the_save_in_page_count_reads(seed):
    rng = random.Random(seed)
    count, burst = rng.choice([(7, 3), (250, 20), (301, 37), (400, 150)])
    checks = CrashChecks(count)
    a_try(checks, 1, burst, list(range(count)), rng)
    for generation in (2, 3):
        earlier = BatchLedger(RecordingStore(checks.store)).load(count)
        if rng.random() < 0.5:  # some waits ended badly
            ended = {
                index: (entry.apikley_task_id, rng.choice(["success", "failed"])) for index, entry in earlier.items()
            }
            BatchLedger(checks.store, generation - 1).settle(count, {i: end for i, end in ended.items() if end[0]})
            earlier = BatchLedger(RecordingStore(checks.store)).load(count)
        a_try(checks, generation, burst, retry_pending(earlier, count, rng), rng)
    assert checks.checked > 0


@pytest.mark.parametrize("seed", range(4))
def test_wherever_a_try_stops_on_object_storage_a_retry_sees_each_item_as_before_or_after_the_save(seed, tmp_path):
    rng = random.Random(seed)
    with mock.patch("airflow_provider_qwen.batch_manifest.PAGE_ITEMS", 10):
        checks = CrashChecks(45, BatchFolder(f"file://{tmp_path}"))
        a_try(checks, 1, 3, list(range(45)), rng)
        for generation in (2, 3, 4):
            earlier = PageLedger(checks.folder).load(45)
            a_try(checks, generation, 3, retry_pending(earlier, 45, rng), rng)
    assert checks.checked > 0


# ---- without a task state store --------------------------------------------------------------------


def test_a_large_batchs_ledger_pages_on_object_storage_are_not_rewritten_whole_for_each_burst(tmp_path):
    written = []
    folder = BatchFolder(f"file://{tmp_path}")
    ledger = PageLedger(folder, generation=1, count=3000)
    entries: dict[int, LedgerEntry] = {}
    with mock.patch("airflow_provider_qwen.batch_ledger.write_records", side_effect=_counting(written)):
        for start in range(0, 3000, 100):
            burst = range(start, start + 100)
            entries.update({index: LedgerEntry(None, 5.0, f"{index:032x}") for index in burst})
            ledger.save(burst, entries)
            entries.update({index: LedgerEntry(task_id(index), 6.0, f"{index:032x}") for index in burst})
            ledger.save(burst, entries)

    assert sum(written) <= 500 * 3000  # the release before wrote about 1,740 bytes per item here
    assert PageLedger(folder).load(3000) == entries


def _counting(written: list[int]):
    def write(dest, records):
        written.append(write_records(dest, records))
        return written[-1]

    return write


def test_a_continuation_file_that_cannot_be_read_is_an_error_naming_it(tmp_path):
    folder = BatchFolder(f"file://{tmp_path}")
    (tmp_path / "submitted-00000.jsonl").write_text('{"generation": 1, "v": 1, "m": 1}\n')
    (tmp_path / "submitted-00000.1.jsonl").write_text('{"generation": 1, "v": 1, "e": "0 x"}\n')
    with pytest.raises(ApikleyError, match=r"submitted-00000\.1\.jsonl cannot be read: the entry '0 x'"):
        PageLedger(folder).load(5)
