"""
What a review of an edit asks and what the answer decides: the pieces of the review operator that need no Airflow.

:class:`~airflow_provider_qwen.operators.review.ApikleyReviewOperator` asks; this module checks the
edit it is given, writes the question's text and turns Airflow's Human-in-the-loop answer into a
:class:`Decision`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.models import TaskState
from airflow_provider_qwen.validation import is_http_url

#: The reviewer's options, as the Airflow UI shows them.
APPROVE, REJECT, RE_EDIT = "Approve", "Reject", "Re-edit"
OPTIONS = [APPROVE, REJECT, RE_EDIT]
#: What a review that gets no answer within ``response_timeout`` decides.
TIMEOUT_OUTCOME = REJECT

#: The outcomes an item ends with.
APPROVED, REJECTED = "approved", "rejected"

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~])")


@dataclass(frozen=True)
class Decision:
    """
    What one answer decides for an item.

    :param action: ``approve``, ``reject`` or ``re-edit``.
    :param responder: who answered (the Airflow user's name), ``None`` when no one did in time.
    :param note: the reviewer's note, or why the item was rejected without one.
    :param prompt: a re-edit's prompt.
    :param strength: a re-edit's strength; ``None`` keeps the edit's.
    """

    action: str
    responder: str | None
    note: str
    prompt: str | None = None
    strength: float | None = None


def check_edit(edit: object) -> dict[str, Any]:
    """
    Return ``edit`` when it is a successful edit to review: a Qwen edit's XCom value or a batch item with its input.

    :raises ApikleyInputError: naming the field, its value and the rule, before anything is asked.
    """
    if not isinstance(edit, Mapping):
        raise ApikleyInputError(f"edit={edit!r}: must be an edit's XCom value, a dict with apikley_task_id")
    for field in ("apikley_task_id", "state", "result_urls", "input"):
        if field not in edit:
            raise ApikleyInputError(f"edit[{field!r}]: is required (the keys given: {sorted(edit)})")
    if edit["state"] != TaskState.SUCCESS.value:
        raise ApikleyInputError(
            f"edit['state']={edit['state']!r}: only a successful edit can be reviewed "
            f"(Apikley task {edit['apikley_task_id']})"
        )
    urls = edit["result_urls"]
    if not isinstance(urls, list) or not urls or not all(is_http_url(url) for url in urls):
        raise ApikleyInputError(f"edit['result_urls']={urls!r}: must list the edit's http(s) results")
    request = edit["input"]
    if not isinstance(request, Mapping) or not request.get("prompt") or not is_http_url(request.get("image_url")):
        raise ApikleyInputError(
            f"edit['input']={request!r}: must be the edit's input, with its prompt and http(s) image_url"
        )
    return dict(edit)


def items_to_review(items: Iterable[Mapping[str, Any]], inputs: list[Mapping[str, Any]] | None = None) -> list[dict]:
    """
    Return a batch's successful items, each with its ``input``, ready to expand a review over.

    :param items: the batch operator's items: its returned list, or the records
        :func:`~airflow_provider_qwen.batch_manifest.read_batch_manifest` reads from its manifest.
    :param inputs: the batch's ``inputs``, for items that do not carry their ``input`` (a returned list).
    :raises ApikleyInputError: when an item has no ``input`` and ``inputs`` does not give it.
    """
    chosen = []
    for item in items:
        if item.get("state") != TaskState.SUCCESS.value:
            continue
        if "input" not in item:
            if inputs is None or not isinstance(item.get("index"), int) or not 0 <= item["index"] < len(inputs):
                raise ApikleyInputError(
                    f"item {item.get('index')!r}: has no input; give the batch's inputs to items_to_review"
                )
            item = {**item, "input": dict(inputs[item["index"]])}
        chosen.append(dict(item))
    return chosen


def decide(response: Mapping[str, Any], round_number: int, max_review_rounds: int) -> Decision:
    """
    Turn a Human-in-the-loop response into what happens to the item.

    :param response: what the review operator's ``execute_complete`` got: ``chosen_options``,
        ``params_input``, ``responded_by_user`` and ``timedout``.
    :param round_number: the review round just answered, from 1.
    :param max_review_rounds: the rounds a reviewer may have; a re-edit asked in the last is a rejection.
    """
    chosen = list(response.get("chosen_options") or [])
    values = response.get("params_input") or {}
    user = response.get("responded_by_user")
    responder = user.get("name") if isinstance(user, Mapping) else None
    note = str(values.get("note") or "").strip()
    if response.get("timedout") or responder is None:
        return Decision("reject", None, "no response within response_timeout: rejected, the default outcome")
    if chosen == [APPROVE]:
        return Decision("approve", responder, note)
    if chosen == [RE_EDIT]:
        if round_number >= max_review_rounds:
            why = f"a re-edit was asked in round {round_number} of max_review_rounds={max_review_rounds}: rejected"
            return Decision("reject", responder, f"{note} ({why})" if note else why)
        strength = values.get("strength")
        return Decision("re-edit", responder, note, prompt=values.get("prompt"), strength=strength)
    if chosen == [REJECT]:
        return Decision("reject", responder, note)
    raise ApikleyInputError(f"chosen_options={chosen!r}: must be one of {OPTIONS}")


def outcome(edit: Mapping[str, Any], decision: Decision, round_number: int, history: list[dict]) -> dict[str, Any]:
    """Return an item's recorded outcome: the task reviewed, what was decided, by whom, and the rounds before."""
    return {
        "apikley_task_id": edit["apikley_task_id"],
        "image_url": edit["input"]["image_url"],
        "outcome": APPROVED if decision.action == "approve" else REJECTED,
        "responded_by": decision.responder,
        "note": decision.note,
        "rounds": round_number,
        "history": history,
    }


def review_body(edit: Mapping[str, Any], task_page: str, details_page: str, *, thumbnails: bool) -> str:
    """
    Return the question's Markdown: the source and the result side by side, and where to read more.

    Airflow keeps the text of a task instance's first question: a re-edit asks again under the same
    text, so it says where the latest result is (the task's "Apikley task" link follows it).
    """
    source = edit["input"]["image_url"]
    results = edit["result_urls"]
    rows = [
        "| Source | Result |",
        "| --- | --- |",
        f"| {_picture(source, 'source', thumbnails)} | "
        + " ".join(_picture(url, f"result {n}", thumbnails) for n, url in enumerate(results, 1))
        + " |",
    ]
    strength = edit["input"].get("strength")
    return "\n".join(
        [
            f"**Prompt:** {_text(str(edit['input']['prompt']))}"
            + (f" (strength {strength})" if strength is not None else ""),
            "",
            *rows,
            "",
            f"Apikley task [{_text(str(edit['apikley_task_id']))}](<{_url(task_page)}>).",
            "",
            f"*Re-edit* submits the edit again with the prompt and strength below and asks again here; "
            f"this text stays the first round's, so see the re-edited result under the task's "
            f"[Apikley task link](<{_url(details_page)}>).",
        ]
    )


def _picture(url: str, label: str, thumbnails: bool) -> str:
    url = _url(url)
    link = f"[{label}](<{url}>)"
    return f"[![{label}](<{url}>)](<{url}>) {link}" if thumbnails else link


def _url(url: str) -> str:
    """``url`` safe inside Markdown's ``<...>``: no space, angle bracket or control character left as it is."""
    return quote(url, safe=":/?#[]@!$&'()*+,;=%~-._")


def _text(value: str) -> str:
    """``value`` as Markdown shows it: special characters escaped, one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(value.split()))
