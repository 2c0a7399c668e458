"""What a reviewer's answer decides for an edit, what the question shows, and which edits can be asked about."""

from __future__ import annotations

import pytest

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.review import (
    APPROVE,
    RE_EDIT,
    REJECT,
    check_edit,
    decide,
    items_to_review,
    outcome,
    review_body,
)

SOURCE = "https://files.example.org/in/shoe.png"
RESULT = "https://files.example.org/out/shoe-edited.png"
EDIT = {
    "apikley_task_id": "task-1",
    "state": "success",
    "result_urls": [RESULT],
    "input": {"prompt": "sepia", "image_url": SOURCE, "strength": 0.6},
    "credits_consumed": 1.0,
}
ALICE = {"id": "7", "name": "alice"}


def answer(option: str, user: dict | None = ALICE, timedout: bool = False, **values: object) -> dict:
    return {
        "chosen_options": [option],
        "params_input": {"prompt": None, "strength": None, "note": "", **values},
        "responded_by_user": user,
        "timedout": timedout,
    }


def test_approve_records_who_answered_and_the_note():
    decision = decide(answer(APPROVE, note="  lovely "), 1, 2)
    assert (decision.action, decision.responder, decision.note) == ("approve", "alice", "lovely")
    assert outcome(EDIT, decision, 1, [])["outcome"] == "approved"
    assert outcome(EDIT, decision, 1, [])["responded_by"] == "alice"


def test_reject_keeps_the_reviewers_note():
    decision = decide(answer(REJECT, note="wrong colour"), 1, 2)
    record = outcome(EDIT, decision, 1, [])
    assert (record["outcome"], record["note"], record["responded_by"]) == ("rejected", "wrong colour", "alice")


def test_re_edit_carries_the_new_prompt_and_strength():
    decision = decide(answer(RE_EDIT, prompt="black and white", strength=0.3, note="too warm"), 1, 2)
    assert (decision.action, decision.prompt, decision.strength, decision.note) == (
        "re-edit",
        "black and white",
        0.3,
        "too warm",
    )


def test_a_re_edit_asked_in_the_last_round_rejects_the_item_saying_so():
    decision = decide(answer(RE_EDIT, prompt="again", note="still off"), 2, 2)
    assert decision.action == "reject"
    assert decision.note == "still off (a re-edit was asked in round 2 of max_review_rounds=2: rejected)"
    assert decide(answer(RE_EDIT, prompt="again"), 1, 1).action == "reject"


def test_no_answer_in_time_rejects_with_no_responder():
    decision = decide(answer(REJECT, user=None, timedout=True), 1, 2)
    assert (decision.action, decision.responder) == ("reject", None)
    assert "no response within response_timeout" in decision.note


def test_an_option_the_review_does_not_offer_is_refused_naming_it():
    with pytest.raises(ApikleyInputError, match=r"chosen_options=\['Maybe'\]"):
        decide(answer("Maybe"), 1, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": "fail"}, r"edit\['state'\]='fail': only a successful edit"),
        ({"result_urls": []}, r"edit\['result_urls'\]=\[\]"),
        ({"result_urls": ["javascript:alert(1)"]}, r"edit\['result_urls'\]"),
        ({"input": {"image_url": SOURCE}}, r"edit\['input'\]=.*prompt"),
    ],
)
def test_only_a_successful_edit_with_its_input_can_be_reviewed(change, message):
    with pytest.raises(ApikleyInputError, match=message):
        check_edit({**EDIT, **change})


def test_an_edit_without_its_task_id_is_refused_naming_the_field():
    with pytest.raises(ApikleyInputError, match=r"edit\['apikley_task_id'\]: is required"):
        check_edit({key: value for key, value in EDIT.items() if key != "apikley_task_id"})


def test_the_question_shows_source_and_result_side_by_side_with_the_task_page():
    body = review_body(EDIT, "http://airflow/apikley/connections/c/tasks/task-1", "http://airflow/ti", thumbnails=True)
    assert "| Source | Result |" in body
    row = next(line for line in body.splitlines() if line.startswith("| [!["))
    assert row.index(SOURCE) < row.index(RESULT)
    assert f"![source](<{SOURCE}>)" in body and f"![result 1](<{RESULT}>)" in body
    assert "(<http://airflow/apikley/connections/c/tasks/task-1>)" in body


def test_without_thumbnails_the_question_loads_no_picture():
    body = review_body(EDIT, "http://airflow/page", "http://airflow/ti", thumbnails=False)
    assert "![" not in body
    assert f"[result 1](<{RESULT}>)" in body


def test_text_and_urls_from_outside_cannot_break_out_of_the_markdown():
    edit = {
        **EDIT,
        "input": {**EDIT["input"], "prompt": "[click](http://evil)\n# title"},
        "result_urls": ["https://files.example.org/out/a b>.png"],
    }
    body = review_body(edit, "http://airflow/page", "http://airflow/ti", thumbnails=True)
    assert "\\[click\\]\\(http://evil\\) \\# title" in body
    assert "a%20b%3E.png" in body and "a b>" not in body


def test_a_batchs_successful_items_are_reviewed_with_their_input():
    items = [
        {"index": 0, "state": "success", "apikley_task_id": "a", "result_urls": [RESULT]},
        {"index": 1, "state": "failed", "apikley_task_id": "b", "result_urls": []},
    ]
    inputs = [{"prompt": "sepia", "image_url": SOURCE}, {"prompt": "noir", "image_url": SOURCE}]
    assert items_to_review(items, inputs) == [{**items[0], "input": inputs[0]}]
    with pytest.raises(ApikleyInputError, match="item 0: has no input"):
        items_to_review(items)
