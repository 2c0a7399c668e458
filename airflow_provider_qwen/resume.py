"""
What a try may take over from an earlier try of the same task instance.

A try resumes an earlier try's Apikley task only when it would send the same request: the
:func:`request_fingerprint` of the model, the input and the callback URL is saved with every task
id, and a try whose fingerprint differs submits anew. Before each paid create an intent is saved,
and the task id after it; an intent with no id is the one window Apikley cannot close (it has no
idempotency key and no listing of tasks), and ``on_orphaned_intent`` says what a retry does then.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow_provider_qwen.exceptions import ApikleyInputError

if TYPE_CHECKING:
    from airflow.sdk import Context

#: What a retry does when it finds that an earlier try began a paid create and saved no task id:
#: ``resubmit`` submits again with a warning naming the possible second charge, ``fail`` fails.
OrphanedIntentPolicy = Literal["resubmit", "fail"]
ORPHANED_INTENT_POLICIES: tuple[OrphanedIntentPolicy, ...] = ("resubmit", "fail")


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
