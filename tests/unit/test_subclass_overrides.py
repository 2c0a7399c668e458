"""
A team's subclass finishes where its code runs: an override of what a resumed worker runs keeps
the task off the triggerer's shortcut, and the provider's own subclass is not such an override.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.links import ApikleyTaskLink
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

IMAGE_URL = "https://files.example.org/in/shoe.png"
EDIT = {"task_id": "edit", "prompt": "sepia", "image_url": IMAGE_URL, "deferrable": True}
GENERIC = {"task_id": "draw", "model": QWEN_IMAGE_TO_IMAGE, "input": {"prompt": "sepia", "image_url": IMAGE_URL}}


class PublishingEdit(QwenImageToImageOperator):
    """A team's edit that publishes each result once the edit is done."""

    published: list[str] = []

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        result = super().execute_complete(context, event)
        self.published.append(result["apikley_task_id"])
        return result


class AuditedResume(ApikleyCreateTaskOperator):
    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        return super().resume_execution(next_method, next_kwargs, context)


class PublishingMixin:
    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        return super().execute_complete(context, event)  # type: ignore[misc]


class MixedInEdit(PublishingMixin, QwenImageToImageOperator):
    pass


class RenamedEdit(QwenImageToImageOperator):
    """A subclass that only sets defaults overrides nothing a worker runs."""

    ui_color = "#ffffff"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strength=0.5, **kwargs)


class OwnLink(ApikleyTaskLink):
    name = "Our task page"


def refusal(make: Any, **arguments: Any) -> str:
    """Why ``make(end_in_triggerer=True, ...)`` is refused when the DAG is parsed: the lines after the colon."""
    with pytest.raises(ApikleyInputError) as excinfo:
        make(end_in_triggerer=True, **arguments)
    message = str(excinfo.value)
    assert message.startswith("end_in_triggerer=True: ")
    return message.split("drop them: ", 1)[1]


@pytest.mark.parametrize(
    ("kind", "arguments"),
    [(QwenImageToImageOperator, EDIT), (ApikleyCreateTaskOperator, GENERIC), (RenamedEdit, EDIT)],
    ids=["qwen", "generic", "subclass-setting-defaults"],
)
def test_the_providers_own_operators_may_end_in_the_triggerer(kind, arguments):
    operator = kind(end_in_triggerer=True, **arguments)  # not refused: the Qwen operator overrides nothing of ours
    assert operator.end_in_triggerer is True


@pytest.mark.parametrize(
    ("kind", "arguments", "line"),
    [
        (
            PublishingEdit,
            EDIT,
            "execute_complete: overridden by PublishingEdit, and a worker runs it when the task resumes",
        ),
        (
            MixedInEdit,
            EDIT,
            "execute_complete: overridden by PublishingMixin, and a worker runs it when the task resumes",
        ),
        (
            AuditedResume,
            GENERIC,
            "resume_execution: overridden by AuditedResume, and a worker runs it when the task resumes",
        ),
    ],
    ids=["execute_complete", "from-a-mixin", "resume_execution"],
)
def test_ending_an_overriding_subclass_in_the_triggerer_is_refused_when_the_dag_is_parsed(kind, arguments, line):
    assert refusal(kind, **arguments) == line


def test_an_extra_link_of_its_own_is_refused_even_when_it_extends_the_providers():
    class LinkedEdit(QwenImageToImageOperator):
        operator_extra_links = (OwnLink(),)

    assert refusal(LinkedEdit, **EDIT).startswith("operator_extra_links: ")
