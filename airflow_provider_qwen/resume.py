"""
What a try may take over from an earlier try of the same task instance.

A try resumes an earlier try's Apikley task only when it would send the same request: the
:func:`request_fingerprint` of the model, the input and the callback URL is saved with every task
id, and a try whose fingerprint differs submits anew and reports the task it abandons. Before each
paid create an intent is saved, and the task id after it; an intent with no id is the one window
Apikley cannot close (it has no idempotency key and no listing of tasks), and ``on_orphaned_intent``
says what a retry does then. What is saved is a :class:`SavedTask`, under one key of Airflow 3.3's
task state store; Airflow 3.1 and 3.2 have none, and a retry there submits anew.

Airflow 3.3's ``ResumableJobMixin`` is not used: it keys one external id with no fingerprint (so it
would resume a task another request paid for), serves only a blocking wait, leaves the window
between the create and the save unrecorded, and does not exist before 3.3.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, cast

from airflow_provider_qwen.exceptions import (
    ApikleyError,
    ApikleyInputError,
    ApikleyOrphanedIntentError,
    ApikleyUnreadableStateError,
)
from airflow_provider_qwen.hooks.retries import Log, was_not_taken
from airflow_provider_qwen.validation import TASK_ID_RULE, is_task_id

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen._compat import TaskStateStore

#: What a retry does when it finds that an earlier try began a paid create and saved no task id:
#: ``resubmit`` submits again with a warning naming the possible second charge, ``fail`` fails.
OrphanedIntentPolicy = Literal["resubmit", "fail"]
ORPHANED_INTENT_POLICIES: tuple[OrphanedIntentPolicy, ...] = ("resubmit", "fail")

#: Envelope codes with which Apikley refuses a ``createTask`` without creating anything.
REFUSAL_CODES = frozenset({400, 401, 402, 404, 422, 429, 433, 455, 505})


def may_have_run_before(context: Context) -> bool:
    """
    Whether an earlier try of this task instance may have submitted to Apikley.

    Not on its first try, which spares the task state store a lookup on the way to the first create.
    """
    return getattr(context["ti"], "try_number", None) != 1


def request_fingerprint(model: str, input: Mapping[str, Any], callback_url: str | None) -> str:
    """
    Return what identifies a request to Apikley: a digest of its model, input and callback URL.

    Two requests have the same fingerprint exactly when Apikley would be sent the same JSON, so a
    key order or a template that renders the same value again does not count as a change.
    """
    canonical = json.dumps(
        {"model": model, "input": input, "callback_url": callback_url},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def check_orphaned_intent_policy(value: object) -> OrphanedIntentPolicy:
    """
    Return ``value`` as an ``on_orphaned_intent`` policy.

    :raises ApikleyInputError: naming the value and the policies there are.
    """
    if value not in ORPHANED_INTENT_POLICIES:
        raise ApikleyInputError(f"on_orphaned_intent={value!r}: must be one of {', '.join(ORPHANED_INTENT_POLICIES)}")
    return cast(OrphanedIntentPolicy, value)


@dataclass(frozen=True)
class Intent:
    """
    A paid create that began: saved before ``createTask`` is sent, replaced by the task id once it answers.

    :param fingerprint: the :func:`request_fingerprint` of the request being sent.
    :param at: epoch seconds when it began.
    """

    fingerprint: str
    at: float


@dataclass(frozen=True)
class SavedTask:
    """
    What the tries of a task instance saved about the Apikley task they paid for.

    Saved as ``{"apikley_task_id", "submitted_at", "fingerprint", "intent": {"fingerprint", "at"}}``,
    each part present only when known: ``intent`` while a create is under way, the task's parts once
    one was created. An entry with a task id and no ``fingerprint`` was saved before requests were
    fingerprinted; ``{}`` holds nothing.

    :param apikley_task_id: the task an earlier try created.
    :param submitted_at: epoch seconds when it was created.
    :param fingerprint: the :func:`request_fingerprint` of the request that created it.
    :param intent: a create that began and has not answered (or whose try was lost before saving).
    """

    apikley_task_id: str | None = None
    submitted_at: float | None = None
    fingerprint: str | None = None
    intent: Intent | None = None

    @classmethod
    def created(cls, apikley_task_id: str, fingerprint: str, submitted_at: float) -> SavedTask:
        """Return the entry of a task just created for the request of ``fingerprint``."""
        return cls(apikley_task_id=apikley_task_id, submitted_at=submitted_at, fingerprint=fingerprint)

    @classmethod
    def from_store(cls, value: object, key: str) -> SavedTask | None:
        """
        Read the entry saved under ``key``; ``None`` when nothing is saved there.

        :raises ApikleyUnreadableStateError: naming ``key`` and what is wrong with its value.
        """
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _unreadable(key, value, "the value is not a JSON object")
        if not value:
            return None
        task_id, submitted_at = value.get("apikley_task_id"), value.get("submitted_at")
        fingerprint, intent = value.get("fingerprint"), value.get("intent")
        if task_id is None and intent is None:
            raise _unreadable(key, value, "the entry has neither an apikley_task_id nor an intent")
        if task_id is not None and not is_task_id(task_id):
            raise _unreadable(key, value, f"apikley_task_id={task_id!r} {TASK_ID_RULE}")
        if task_id is not None and not _is_time(submitted_at):
            raise _unreadable(key, value, f"submitted_at={submitted_at!r} is not epoch seconds")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise _unreadable(key, value, f"fingerprint={fingerprint!r} is not a string")
        return cls(
            apikley_task_id=task_id,
            submitted_at=float(submitted_at) if task_id is not None and _is_time(submitted_at) else None,
            fingerprint=fingerprint,
            intent=None if intent is None else _read_intent(key, value, intent),
        )

    def to_store(self) -> dict[str, Any]:
        """Return the entry as the task state store keeps it: JSON primitives, without the parts not known."""
        saved: dict[str, Any] = {}
        if self.apikley_task_id is not None:
            saved.update(apikley_task_id=self.apikley_task_id, submitted_at=self.submitted_at)
            if self.fingerprint is not None:
                saved["fingerprint"] = self.fingerprint
        if self.intent is not None:
            saved["intent"] = {"fingerprint": self.intent.fingerprint, "at": self.intent.at}
        return saved


@dataclass(frozen=True)
class Takeover:
    """
    What a try takes over from the tries before it.

    :param resume: the task an earlier try created for the same request, to resume (if it is still good).
    :param submitted_at: when ``resume`` was created.
    :param replaced_apikley_task_id: a task an earlier try created for another request, abandoned:
        this try submits anew and says so in its result.
    """

    resume: str | None = None
    submitted_at: float | None = None
    replaced_apikley_task_id: str | None = None


def take_over(
    saved: SavedTask | None, fingerprint: str, on_orphaned_intent: OrphanedIntentPolicy, log: Log, key: str
) -> Takeover:
    """
    Decide what a retry that would send the request of ``fingerprint`` takes over from ``saved``.

    It resumes the saved task only when that was created for the same request. A task created for
    another request (or saved before requests were fingerprinted) is abandoned with a warning; a
    create that began and saved no id is ``on_orphaned_intent``'s to decide, with a warning when it
    submits again.

    :param key: the task state store key ``saved`` was read from, named in messages.
    :raises ApikleyOrphanedIntentError: for an intent with no id, when ``on_orphaned_intent`` is ``fail``.
    """
    if saved is None:
        return Takeover()
    if saved.intent is not None:
        _orphaned(saved.intent, saved.intent.fingerprint == fingerprint, on_orphaned_intent, log, key)
    elif saved.apikley_task_id is not None and saved.fingerprint == fingerprint:
        return Takeover(resume=saved.apikley_task_id, submitted_at=saved.submitted_at)
    # What is left of an entry with an intent is a task its try had already given up (failed, or
    # gone from Apikley) when it was of this request, and an abandoned one when it was of another.
    if saved.apikley_task_id is None or saved.fingerprint == fingerprint:
        return Takeover()
    why = (
        "for another request (its model, input or callback URL differ from this try's)"
        if saved.fingerprint is not None
        else "and saved without its request's fingerprint, so it cannot be told to answer this try's request"
    )
    log.warning(
        "Apikley task %s was submitted by an earlier try %s: it is abandoned, its cost already paid, and this try "
        "submits anew",
        saved.apikley_task_id,
        why,
    )
    return Takeover(replaced_apikley_task_id=saved.apikley_task_id)


def read_saved_task(state_store: TaskStateStore | None, key: str) -> SavedTask | None:
    """
    Read what earlier tries saved under ``key``; ``None`` without a task state store or an entry.

    :raises ApikleyUnreadableStateError: naming ``key`` and what is wrong with its value.
    """
    return SavedTask.from_store(state_store.get(key), key) if state_store is not None else None


def saving_to(state_store: TaskStateStore | None, key: str) -> Callable[[SavedTask], None]:
    """Return what saves an entry under ``key`` for later tries; without a task state store, nothing is saved."""

    def save(entry: SavedTask) -> None:
        if state_store is not None:
            state_store.set(key, entry.to_store())

    return save


def create_recorded(
    create: Callable[[], str], fingerprint: str, before: SavedTask | None, save: Callable[[SavedTask], None]
) -> tuple[str, float]:
    """
    Run the paid ``create``, saving the intent before it and the task id it returns after.

    When ``create`` fails in a way that surely created nothing (Apikley refused it, or it never left
    this machine), ``before`` is saved again, so that a retry does not take a refusal for a task
    that may exist.

    :param create: sends ``createTask`` and returns the new task's id.
    :param before: what was saved before this try's create.
    :param save: writes an entry where a retry reads it.
    :return: the id of the task created, and when (epoch seconds).
    """
    before = replace(before or SavedTask(), intent=None)
    save(replace(before, intent=Intent(fingerprint, time.time())))
    try:
        apikley_task_id = create()
    except Exception as err:
        if surely_not_created(err):
            save(before)
        raise
    submitted_at = time.time()
    save(SavedTask.created(apikley_task_id, fingerprint, submitted_at))
    return apikley_task_id, submitted_at


def surely_not_created(error: BaseException) -> bool:
    """Whether a ``createTask`` that raised ``error`` surely created no task: refused by Apikley, or never sent."""
    return was_not_taken(error) or (isinstance(error, ApikleyError) and error.code in REFUSAL_CODES)


def _orphaned(intent: Intent, same_request: bool, policy: OrphanedIntentPolicy, log: Log, key: str) -> None:
    """Apply ``policy`` to a create an earlier try began and saved no id for: fail, or warn and go on."""
    began = datetime.fromtimestamp(intent.at, UTC).isoformat(timespec="seconds")
    request = "this same request" if same_request else "another request"
    what = (
        f"An earlier try began a paid createTask for {request} at {began} and saved no Apikley task id (its "
        "worker was lost before Apikley answered, or before the answer was saved): Apikley may have created and "
        "charged for a task that cannot be looked up, since its API has no idempotency key and no listing of tasks"
    )
    if policy == "fail":
        raise ApikleyOrphanedIntentError(
            f"{what}. on_orphaned_intent='fail' stops here rather than risk paying twice. To go on: if Apikley's "
            f"dashboard shows a task created at {began}, give its id to ApikleyTaskSensor; to submit anew, set "
            f"on_orphaned_intent='resubmit', or delete this task instance's task state store key {key!r} (REST API: "
            f"DELETE /api/v2/dags/<dag_id>/dagRuns/<run_id>/taskInstances/<task_id>/state-store/{key}) and clear "
            "the task."
        )
    log.warning("%s. Submitting anew (on_orphaned_intent='resubmit'): this may pay a second time.", what)


def _read_intent(key: str, value: dict[str, Any], intent: object) -> Intent:
    if not isinstance(intent, dict):
        raise _unreadable(key, value, f"intent={intent!r} is not an object")
    fingerprint, at = intent.get("fingerprint"), intent.get("at")
    if not isinstance(fingerprint, str):
        raise _unreadable(key, value, f"intent.fingerprint={fingerprint!r} is not a string")
    if not _is_time(at):
        raise _unreadable(key, value, f"intent.at={at!r} is not epoch seconds")
    return Intent(fingerprint, float(at))


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _unreadable(key: str, value: object, problem: str) -> ApikleyUnreadableStateError:
    shown = repr(value)
    shown = shown if len(shown) <= 300 else shown[:297] + "..."
    return ApikleyUnreadableStateError(
        f"Task state store key {key!r}: {problem} (it holds {shown}). What an earlier try submitted cannot be "
        "told from it, so nothing was submitted: delete the key to submit anew, or save an entry shaped as "
        "airflow_provider_qwen.resume.SavedTask describes."
    )


def orphaned_intents(policy: OrphanedIntentPolicy, requests: str, log: Log) -> None:
    """
    Apply ``on_orphaned_intent`` to the creates an earlier try began and saved no task id for.

    ``resubmit`` logs a warning naming them and the possible second charge; ``fail`` raises.

    :param requests: the requests, as the user knows them (``inputs[3], inputs[7]``).
    :raises ApikleyOrphanedIntentError: with ``fail``, naming them, before anything is submitted.
    """
    found = (
        f"An earlier try began a paid create for {requests} and saved no Apikley task id: Apikley may have "
        "created and charged for it, and offers no way to look it up"
    )
    if policy == "fail":
        raise ApikleyOrphanedIntentError(
            f"{found}. on_orphaned_intent='fail' submits nothing: check the account's tasks with Apikley, then "
            "run again with on_orphaned_intent='resubmit'"
        )
    log.warning("%s. on_orphaned_intent='resubmit' submits it again, which may be charged a second time", found)


def try_deadline(context: Context, timeout: float, execution_timeout: timedelta | None) -> float:
    """
    Return when this try stops waiting, in epoch seconds: ``timeout`` from now, or sooner by ``execution_timeout``.

    Counted from this try, never from an earlier try's submit, so a retry after a timeout waits its
    full time again. Airflow does not enforce ``execution_timeout`` on a deferred task: the wait does.
    """
    deadline = time.time() + timeout
    started = getattr(context["ti"], "start_date", None)
    if execution_timeout and isinstance(started, datetime):
        deadline = min(deadline, (started + execution_timeout).timestamp())
    return deadline
