"""What a retry takes over from earlier tries: the same request resumes, another is replaced, nothing is silent."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import pytest

from airflow_provider_qwen.exceptions import (
    ApikleyConnectionError,
    ApikleyInsufficientCreditsError,
    ApikleyOrphanedIntentError,
    ApikleyRateLimitError,
    ApikleyServerError,
    ApikleyUnreadableStateError,
    ApikleyValidationError,
)
from airflow_provider_qwen.resume import (
    Intent,
    SavedTask,
    Takeover,
    create_recorded,
    request_fingerprint,
    take_over,
)

KEY = "apikley_task"
OLD = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
NEW = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
MODEL = "qwen/image-to-image"
RED = {"prompt": "make it red", "image_url": "https://files.example.org/in/shoe.png"}
BLUE = {**RED, "prompt": "make it BLUE"}
#: 2026-12-06 23:40:00 UTC
EARLIER = 1796600400.0


def fingerprint(input: dict, callback_url: str | None = None) -> str:
    return request_fingerprint(MODEL, input, callback_url)


@pytest.fixture
def log(caplog) -> logging.Logger:
    caplog.set_level(logging.INFO, logger="try")
    return logging.getLogger("try")


def test_the_fingerprint_changes_with_the_request_and_not_with_key_order():
    assert fingerprint(RED) == fingerprint(dict(reversed(RED.items())))
    assert fingerprint(RED) != fingerprint(BLUE)
    assert fingerprint(RED) != fingerprint(RED, "https://airflow.example.org/apikley/callback")
    assert fingerprint(RED) != request_fingerprint("qwen/text-to-image", RED, None)


def test_an_entry_reads_back_as_it_was_saved():
    entries = [
        SavedTask.created(OLD, fingerprint(RED), EARLIER),
        SavedTask(intent=Intent(fingerprint(BLUE), EARLIER + 5)),
        SavedTask(OLD, EARLIER, fingerprint(RED), Intent(fingerprint(BLUE), EARLIER + 5)),
        SavedTask(OLD, EARLIER),  # saved before requests were fingerprinted
    ]
    for entry in entries:
        assert SavedTask.from_store(entry.to_store(), KEY) == entry
    assert SavedTask.from_store(None, KEY) is None
    assert SavedTask.from_store({}, KEY) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([OLD], "the value is not a JSON object"),
        (OLD, "the value is not a JSON object"),
        ({"task": OLD}, "the entry has neither an apikley_task_id nor an intent"),
        ({"apikley_task_id": "../etc/passwd", "submitted_at": EARLIER}, "apikley_task_id='../etc/passwd' must be"),
        ({"apikley_task_id": 42, "submitted_at": EARLIER}, "apikley_task_id=42 must be"),
        ({"apikley_task_id": OLD}, "submitted_at=None is not epoch seconds"),
        ({"apikley_task_id": OLD, "submitted_at": "yesterday"}, "submitted_at='yesterday' is not epoch seconds"),
        ({"apikley_task_id": OLD, "submitted_at": True}, "submitted_at=True is not epoch seconds"),
        ({"apikley_task_id": OLD, "submitted_at": EARLIER, "fingerprint": 7}, "fingerprint=7 is not a string"),
        ({"intent": "creating"}, "intent='creating' is not an object"),
        ({"intent": {"at": EARLIER}}, "intent.fingerprint=None is not a string"),
        ({"intent": {"fingerprint": "f", "at": "now"}}, "intent.at='now' is not epoch seconds"),
    ],
)
def test_an_entry_that_cannot_be_read_is_an_error_naming_the_key_and_the_problem(value, problem):
    with pytest.raises(ApikleyUnreadableStateError) as excinfo:
        SavedTask.from_store(value, KEY)
    message = str(excinfo.value)
    assert message.startswith(f"Task state store key '{KEY}': {problem}")
    assert "nothing was submitted: delete the key to submit anew" in message


def test_the_same_request_resumes_the_saved_task(log, caplog):
    saved = SavedTask.created(OLD, fingerprint(BLUE), EARLIER)
    assert take_over(saved, fingerprint(BLUE), "fail", log, KEY) == Takeover(resume=OLD, submitted_at=EARLIER)
    assert caplog.records == []


@pytest.mark.parametrize(
    ("saved_fingerprint", "why"),
    [(fingerprint(RED), "for another request"), (None, "and saved without its request's fingerprint")],
    ids=["changed", "saved before fingerprints"],
)
def test_another_request_replaces_the_saved_task_with_a_warning(log, caplog, saved_fingerprint, why):
    saved = SavedTask(OLD, EARLIER, saved_fingerprint)
    assert take_over(saved, fingerprint(BLUE), "resubmit", log, KEY) == Takeover(replaced_apikley_task_id=OLD)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"Apikley task {OLD} was submitted by an earlier try {why}" in record.getMessage()
    assert "this try submits anew" in record.getMessage()


def test_an_intent_with_no_id_is_resubmitted_with_a_warning_naming_the_second_charge_and_the_time(log, caplog):
    saved = SavedTask(intent=Intent(fingerprint(BLUE), EARLIER))
    assert take_over(saved, fingerprint(BLUE), "resubmit", log, KEY) == Takeover()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    began = datetime.fromtimestamp(EARLIER, UTC).isoformat(timespec="seconds")
    assert f"An earlier try began a paid createTask for this same request at {began}" in message
    assert "this may pay a second time" in message


def test_an_intent_with_no_id_fails_under_the_fail_policy_saying_how_to_go_on(log, caplog):
    saved = SavedTask(intent=Intent(fingerprint(RED), EARLIER))
    with pytest.raises(ApikleyOrphanedIntentError) as excinfo:
        take_over(saved, fingerprint(BLUE), "fail", log, KEY)
    message = str(excinfo.value)
    began = datetime.fromtimestamp(EARLIER, UTC).isoformat(timespec="seconds")
    assert f"began a paid createTask for another request at {began} and saved no Apikley task id" in message
    assert "ApikleyTaskSensor" in message and "on_orphaned_intent='resubmit'" in message
    assert f"state-store/{KEY}" in message
    assert caplog.records == []


def test_an_intent_after_a_task_of_another_request_also_names_that_task(log, caplog):
    saved = SavedTask(OLD, EARLIER, fingerprint(RED), Intent(fingerprint(BLUE), EARLIER + 60))
    assert take_over(saved, fingerprint(BLUE), "resubmit", log, KEY) == Takeover(replaced_apikley_task_id=OLD)
    assert [record.levelno for record in caplog.records] == [logging.WARNING, logging.WARNING]


def test_an_intent_after_a_failed_task_of_the_same_request_does_not_resume_it(log):
    saved = SavedTask(OLD, EARLIER, fingerprint(BLUE), Intent(fingerprint(BLUE), EARLIER + 60))
    assert take_over(saved, fingerprint(BLUE), "resubmit", log, KEY) == Takeover()


class Entries(list):
    """What was saved, in order."""

    def save(self, entry: SavedTask) -> None:
        self.append(entry)


def raising(error: BaseException):
    def create() -> str:
        raise error

    return create


def test_the_intent_is_saved_before_the_create_and_the_id_after_it():
    saved = Entries()
    before = SavedTask.created(OLD, fingerprint(RED), EARLIER)

    def create() -> str:
        assert saved == [SavedTask(OLD, EARLIER, fingerprint(RED), Intent(fingerprint(BLUE), saved[0].intent.at))]
        return NEW

    task_id, submitted_at = create_recorded(create, fingerprint(BLUE), before, saved.save)
    assert task_id == NEW
    assert saved[-1] == SavedTask.created(NEW, fingerprint(BLUE), submitted_at)
    assert saved[0].intent.at <= submitted_at


@pytest.mark.parametrize(
    "error",
    [
        ApikleyInsufficientCreditsError("no credits", code=402),
        ApikleyValidationError("bad input", code=422),
        ApikleyRateLimitError("slow down", code=429),
        ApikleyConnectionError("refused", request_not_sent=True),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_create_that_surely_created_nothing_takes_its_intent_back(error):
    saved = Entries()
    before = SavedTask.created(OLD, fingerprint(BLUE), EARLIER)
    with pytest.raises(type(error)):
        create_recorded(raising(error), fingerprint(BLUE), before, saved.save)
    assert saved[-1] == before
    with pytest.raises(type(error)):  # nothing saved before: an entry that reads as nothing
        create_recorded(raising(error), fingerprint(BLUE), None, saved.save)
    assert SavedTask.from_store(saved[-1].to_store(), KEY) is None


@pytest.mark.parametrize(
    "error",
    [
        ApikleyServerError("upstream hiccup", code=500),
        ApikleyConnectionError("reset after sending", request_not_sent=False),
        RuntimeError("worker lost"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_create_that_may_have_created_a_task_leaves_its_intent(error):
    saved = Entries()
    with pytest.raises(type(error)):
        create_recorded(raising(error), fingerprint(BLUE), None, saved.save)
    assert saved[-1].intent is not None and saved[-1].intent.fingerprint == fingerprint(BLUE)
    assert saved[-1].apikley_task_id is None


def test_the_orphaned_intent_message_names_its_time_in_utc():
    with pytest.raises(ApikleyOrphanedIntentError, match=re.escape("at 2026-12-06T")):
        take_over(SavedTask(intent=Intent("f", EARLIER)), "f", "fail", logging.getLogger("try"), KEY)
