"""Editing an image with Qwen's image-to-image model: the typed Apikley operator for that model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, QwenImageToImageInput
from airflow_provider_qwen.operators.apikley import RESUME_KEY, ApikleyCreateTaskOperator

__all__ = ["INPUT_FIELDS", "RESUME_KEY", "QwenImageToImageOperator"]

#: The operator arguments that make up the model's ``input``.
INPUT_FIELDS: tuple[str, ...] = tuple(QwenImageToImageInput.model_fields)


class QwenImageToImageOperator(ApikleyCreateTaskOperator):
    """
    Edit an image with Qwen's image-to-image model on Apikley.

    The typed specialisation of :class:`~airflow_provider_qwen.operators.apikley.ApikleyCreateTaskOperator`
    for ``qwen/image-to-image``: the model's fields are arguments of their own, validated against
    the model's rules after templates render and before any request, so a bad value fails the
    task without spending credits. Everything else (waiting, deferring, resuming, copying results
    to ``output_path``, callbacks, the extra link) and the returned
    ``{"apikley_task_id", "state", "result_urls", "input", "credits_consumed"}`` are the generic
    operator's; so are the other arguments, described there.

    The edit's own arguments (all templated) are the fields of
    :class:`~airflow_provider_qwen.models.QwenImageToImageInput`, with its rules: ``prompt`` and
    ``image_url`` (required), ``strength``, ``output_format``, ``acceleration``, ``negative_prompt``,
    ``seed``, ``num_inference_steps``, ``guidance_scale``, ``enable_safety_checker``. Those left as
    ``None`` are left out of the request, so Apikley applies its defaults.
    """

    template_fields: Sequence[str] = (*INPUT_FIELDS, "callback_url", "apikley_conn_id", "output_path", "result_name")

    def __init__(
        self,
        *,
        prompt: str,
        image_url: str,
        strength: float | None = None,
        output_format: str | None = None,
        acceleration: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        enable_safety_checker: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=QWEN_IMAGE_TO_IMAGE, input={}, **kwargs)
        self.prompt = prompt
        self.image_url = image_url
        self.strength = strength
        self.output_format = output_format
        self.acceleration = acceleration
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.enable_safety_checker = enable_safety_checker

    def build_input(self) -> QwenImageToImageInput:
        """
        Return the validated model input from the (rendered) arguments.

        :raises ApikleyInputError: naming each field that breaks a rule, its value and the rule.
        """
        return QwenImageToImageInput.build(**{field: getattr(self, field) for field in INPUT_FIELDS})

    def image_urls(self, request: dict[str, Any]) -> dict[str, str]:
        """Return the one image URL an edit names, by its argument: ``{"image_url": ...}``."""
        return {"image_url": request["image_url"]}

    def task_input(self) -> dict[str, Any]:
        """Return the ``input`` to send: :meth:`build_input` as Apikley takes it."""
        return self.build_input().to_api()
