"""Review of an edit in the Airflow UI: approve it, reject it, or have it edited again, through Human-in-the-loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

from airflow.providers.common.compat.sdk import ObjectStoragePath, Param, conf
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.definitions.param import ParamsDict

from airflow_provider_qwen.api_server.urls import task_page_url
from airflow_provider_qwen.events import summary_from_record
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyInputError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.links import APIKLEY_TASK_ID_XCOM_KEY, ApikleyTaskLink
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, QwenImageToImageInput
from airflow_provider_qwen.results import with_stored_results
from airflow_provider_qwen.resume import (
    create_recorded,
    may_have_run_before,
    read_saved_task,
    request_fingerprint,
    saving_to,
    take_over,
    try_deadline,
)
from airflow_provider_qwen.review import (
    OPTIONS,
    TIMEOUT_OUTCOME,
    Decision,
    check_edit,
    decide,
    items_to_review,
    outcome,
    review_body,
)
from airflow_provider_qwen.storage import check_writable
from airflow_provider_qwen.waits import TaskWait, wait_until_done

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen.hooks.apikley import ApikleyHook

__all__ = ["REJECTED_XCOM_KEY", "REVIEW_XCOM_KEY", "ApikleyReviewOperator", "items_to_review"]

#: XCom key of each item's outcome: approved or rejected, by whom, the note, the rounds.
REVIEW_XCOM_KEY = "review"
#: XCom key of a rejected item's outcome (pushed only for those).
REJECTED_XCOM_KEY = "rejected"
#: XCom key of the item under review between two answers: the round, the edit, the rounds before.
STATE_XCOM_KEY = "review_state"
#: Task state store key of a round's re-edit, so a retry resumes it instead of paying again.
REEDIT_RESUME_KEY = "apikley_review_round_{round}"


class ApikleyReviewOperator(HITLOperator):
    """
    Ask a reviewer, in the Airflow UI, to approve, reject or re-edit one edited image.

    Built on the standard provider's :class:`~airflow.providers.standard.operators.hitl.HITLOperator`:
    the question appears under the task's *Required Actions* with the source and the result side by
    side (thumbnails and links) and the Apikley task's page. Map it over the edits, one review per
    item: ``ApikleyReviewOperator.partial(task_id="review").expand(edit=edits.output)``; for a batch,
    over :func:`~airflow_provider_qwen.review.items_to_review` of its items.

    The reviewer chooses:

    - **Approve**: the task returns the edit, exactly as it was given (or as the last re-edit
      produced it, in the same shape), so ``review.output`` holds the approved edits only.
    - **Reject**: the task returns nothing, and the item's outcome goes to XCom under ``rejected``
      (:data:`REJECTED_XCOM_KEY`) with the reviewer's note, and to the log.
    - **Re-edit**: the edit is submitted again with the ``prompt`` and ``strength`` the reviewer
      entered (the rest of its input unchanged), validated as the edit operator validates it, paid
      once; the task waits for it on the worker and asks again. A re-edit asked in round
      ``max_review_rounds`` rejects the item, with a note saying so.

    No answer within ``response_timeout`` rejects the item (Airflow records the default option,
    ``Reject``, and no responder). Every item's outcome goes to XCom under ``review``
    (:data:`REVIEW_XCOM_KEY`): ``apikley_task_id``, ``image_url``, ``outcome`` (``approved`` or
    ``rejected``), ``responded_by`` (the Airflow user who answered, ``None`` on a timeout),
    ``note``, ``rounds`` and ``history`` (the re-edits before, each with its responder, prompt,
    strength and note).

    Airflow keeps one question per task instance, and the text of the first: a re-edit asks again
    under it, and the re-edited result is behind the task's "Apikley task" link.

    On Airflow 3.3 (its task state store) a retry of the task resumes each round's re-edit when it
    would send the same request, as the edit operators do; a changed one is submitted anew.

    :param edit: the edit to review (templated): a Qwen edit's XCom value, or a batch item with its ``input``.
    :param max_review_rounds: how many times the item is asked about, re-edits included; 1 or more.
    :param subject: the question's headline (templated).
    :param body: Markdown put before the pictures (templated).
    :param response_timeout: how long to wait for each answer; ``None`` waits as long as it takes.
    :param thumbnails: show the pictures in the question; ``False`` gives links only, so the
        reviewer's browser loads nothing from Apikley's hosts until a link is clicked.
    :param apikley_conn_id: the Airflow connection to Apikley, for re-edits.
    :param timeout: seconds a re-edit may take before the task fails.
    :param poll_interval: seconds between a re-edit's status queries; by default Apikley's advised cadence.
    :param output_path: where a re-edit's results are copied, as the edit operator's ``output_path``
        (give the same, so an approved re-edit has ``stored`` as the first edit had).
    """

    template_fields: Sequence[str] = ("subject", "body", "edit", "apikley_conn_id", "output_path")
    template_fields_renderers = {"edit": "json"}
    ui_color = "#fde2c8"
    operator_extra_links = (ApikleyTaskLink(),)

    def __init__(
        self,
        *,
        edit: dict[str, Any] | str,
        max_review_rounds: int = 2,
        subject: str = "Review an edited image",
        body: str | None = None,
        thumbnails: bool = True,
        apikley_conn_id: str = DEFAULT_CONN_ID,
        timeout: float = 3600.0,
        poll_interval: float | None = None,
        output_path: str | ObjectStoragePath | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(max_review_rounds, bool) or not isinstance(max_review_rounds, int) or max_review_rounds < 1:
            raise ApikleyInputError(f"max_review_rounds={max_review_rounds!r}: must be a whole number, 1 or more")
        for fixed in ("options", "defaults", "multiple", "params"):
            if fixed in kwargs:
                raise ApikleyInputError(f"{fixed}=...: the review sets its own ({OPTIONS}, timeout {TIMEOUT_OUTCOME})")
        super().__init__(
            subject=subject,
            body=body,
            options=list(OPTIONS),
            defaults=[TIMEOUT_OUTCOME],
            multiple=False,
            params=_review_params(None, None),
            **kwargs,
        )
        self.edit = edit
        self.max_review_rounds = max_review_rounds
        self.thumbnails = thumbnails
        self.apikley_conn_id = apikley_conn_id
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.output_path = output_path

    @cached_property
    def hook(self) -> ApikleyHook:
        """The hook for ``apikley_conn_id``."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported when the task runs

        return ApikleyHook(self.apikley_conn_id)

    def execute(self, context: Context) -> NoReturn:
        """Check the edit, then ask about it."""
        edit = check_edit(self.edit)
        if self.output_path:
            check_writable(self.output_path)
        self._ask(context, {"round": 1, "edit": edit, "history": []})

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any] | None:
        """Act on the reviewer's answer: return the approved edit, record a rejection, or re-edit and ask again."""
        response = super().execute_complete(context, event)
        ti = context["ti"]
        # without map_indexes, Airflow returns the XComs of every map index of the task
        state = ti.xcom_pull(task_ids=ti.task_id, key=STATE_XCOM_KEY, map_indexes=ti.map_index)
        if not isinstance(state, dict) or "edit" not in state:
            raise ApikleyError(f"The review's state (XCom {STATE_XCOM_KEY!r}) is missing: {state!r}; clear the task")
        edit, round_number, history = state["edit"], int(state["round"]), list(state["history"])
        decision = decide(response, round_number, self.max_review_rounds)
        if decision.action == "re-edit":
            history.append(_round_record(edit, decision, round_number))
            edited = self._re_edit(context, edit, decision, round_number)
            self._ask(context, {"round": round_number + 1, "edit": edited, "history": history})
        result = outcome(edit, decision, round_number, history)
        context["ti"].xcom_push(key=REVIEW_XCOM_KEY, value=result)
        if decision.action == "approve":
            self.log.info("Apikley task %s approved by %s", edit["apikley_task_id"], decision.responder)
            return edit
        context["ti"].xcom_push(key=REJECTED_XCOM_KEY, value=result)
        self.log.warning(
            "Apikley task %s rejected by %s: %s",
            edit["apikley_task_id"],
            decision.responder or "nobody (timeout)",
            decision.note or "no note",
        )
        return None

    def _ask(self, context: Context, state: dict[str, Any]) -> NoReturn:
        """Save the item under review, write the question, and wait for its answer (:meth:`execute_complete`)."""
        edit = state["edit"]
        context["ti"].xcom_push(key=STATE_XCOM_KEY, value=state)
        context["ti"].xcom_push(key=APIKLEY_TASK_ID_XCOM_KEY, value=edit["apikley_task_id"])
        if state["round"] == 1:  # Airflow keeps the first question's text and form
            pictures = review_body(
                edit,
                task_page_url(self.apikley_conn_id, edit["apikley_task_id"]),
                _details_page(context),
                thumbnails=self.thumbnails,
            )
            self.body = f"{self.body}\n\n{pictures}" if self.body else pictures
            self.params = _review_params(edit["input"]["prompt"], edit["input"].get("strength"))
        else:
            self.log.info(
                "Round %d of %d: asking about Apikley task %s (results %s)",
                state["round"],
                self.max_review_rounds,
                edit["apikley_task_id"],
                ", ".join(edit["result_urls"]),
            )
        super().execute(context)  # writes the question (a later round's clears the answer) and waits
        raise AssertionError("HITLOperator.execute returned without waiting")

    def _re_edit(self, context: Context, edit: dict[str, Any], decision: Decision, round_number: int) -> dict:
        """Submit the edit again with the reviewer's prompt and strength, wait for it, return its result."""
        changes = {"prompt": decision.prompt or edit["input"]["prompt"]}
        if decision.strength is not None:
            changes["strength"] = decision.strength
        request = QwenImageToImageInput.build(**{**edit["input"], **changes}).to_api()
        fingerprint = request_fingerprint(QWEN_IMAGE_TO_IMAGE, request, None)
        key = REEDIT_RESUME_KEY.format(round=round_number)
        state_store = context.get("task_state_store")
        saved = read_saved_task(state_store, key) if may_have_run_before(context) else None
        takeover = take_over(saved, fingerprint, "resubmit", self.log, key)
        if takeover.resume:
            apikley_task_id, submitted_at = takeover.resume, takeover.submitted_at or time.time()
            self.log.info("Resuming re-edit %s submitted by an earlier try for the same request", apikley_task_id)
        else:
            create = partial(self.hook.create_task, QWEN_IMAGE_TO_IMAGE, request, None)
            apikley_task_id, submitted_at = create_recorded(create, fingerprint, saved, saving_to(state_store, key))
            self.log.info(
                "Re-editing Apikley task %s as %s, asked by %s: %s",
                edit["apikley_task_id"],
                apikley_task_id,
                decision.responder,
                changes,
            )
        context["ti"].xcom_push(key=APIKLEY_TASK_ID_XCOM_KEY, value=apikley_task_id)
        wait = TaskWait(
            apikley_task_id,
            submitted_at=submitted_at,
            deadline=try_deadline(context, self.timeout, None),
            poll_interval=self.poll_interval,
            max_consecutive_poll_errors=10,
            expected_duration=0.0,
            logger=self.log,
        )
        summary = {**summary_from_record(wait_until_done(self.hook, wait)), "input": request}
        if self.output_path:
            summary = with_stored_results(self.hook, summary, self.output_path)
        # what the edit carried besides (a batch item's index, say) stays; what told of the old task goes
        kept = {
            key: value for key, value in edit.items() if key not in (*summary, "stored", "replaced_apikley_task_id")
        }
        return {**kept, **summary}


def _review_params(prompt: str | None, strength: float | None) -> ParamsDict:
    """Return the form under the question: a re-edit's prompt and strength (the edit's, to start with), and a note."""
    return ParamsDict(
        {
            "prompt": Param(prompt, type=["string", "null"], maxLength=5000, description="The prompt of a re-edit"),
            "strength": Param(
                strength,
                type=["number", "null"],
                minimum=0,
                maximum=1,
                description="The strength of a re-edit: 0 keeps the source, 1 remakes it",
            ),
            "note": Param("", type=["string", "null"], maxLength=2000, description="Why (kept with the outcome)"),
        }
    )


def _round_record(edit: dict[str, Any], decision: Decision, round_number: int) -> dict[str, Any]:
    return {
        "round": round_number,
        "apikley_task_id": edit["apikley_task_id"],
        "responded_by": decision.responder,
        "action": decision.action,
        "prompt": decision.prompt,
        "strength": decision.strength,
        "note": decision.note,
    }


def _details_page(context: Context) -> str:
    """Return the task instance's page in the Airflow UI, where its "Apikley task" link follows the latest edit."""
    ti = context["ti"]
    path = "/".join(quote(str(part), safe="") for part in ("dags", ti.dag_id, "runs", ti.run_id, "tasks", ti.task_id))
    mapped = f"/mapped/{ti.map_index}" if getattr(ti, "map_index", -1) not in (-1, None) else ""
    return f"{conf.get('api', 'base_url', fallback='').rstrip('/')}/{path}{mapped}/details"
