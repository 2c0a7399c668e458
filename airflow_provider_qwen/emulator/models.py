"""
The models the emulator serves, as one table: each one's name, request schema and how it makes its pictures.

Everything else is shared: validation (:mod:`~.validation`) picks the schema by the body's
``model``; a task's timeline, failures, results, expiry, callbacks and credits
(:mod:`~.generation`, :mod:`~.jobs`) do not depend on the model. Adding a model is a schema file
in ``schema/``, a generate function, and one row in :data:`MODELS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from types import MappingProxyType
from typing import Any

from airflow_provider_qwen.emulator.generation import Generate, draw_from_prompt, edit_source_image

IMAGE_TO_IMAGE = "qwen/image-to-image"
TEXT_TO_IMAGE = "qwen/text-to-image"


@dataclass(frozen=True)
class Model:
    """
    One model the emulator serves.

    :param name: what a createTask body's ``model`` says.
    :param schema: its createTask request body's JSON schema (draft 2020-12), as in ``schema/``.
    :param generate: makes the task's pictures from its input, the documented defaults filled in;
        each picture becomes one result URL.
    """

    name: str
    schema: Mapping[str, Any]
    generate: Generate

    @cached_property
    def input_properties(self) -> Mapping[str, Any]:
        """The schema of each input field, by name."""
        return self.schema["properties"]["input"]["properties"]

    @cached_property
    def defaults(self) -> Mapping[str, Any]:
        """The documented default of every input field that has one."""
        return {name: spec["default"] for name, spec in self.input_properties.items() if "default" in spec}


def _model(name: str, schema_file: str, generate: Generate) -> Model:
    schema = json.loads(resources.files(__package__).joinpath(f"schema/{schema_file}").read_text(encoding="utf-8"))
    if schema["properties"]["model"]["enum"] != [name]:
        raise RuntimeError(f"schema/{schema_file} is not the schema of {name}")
    return Model(name, schema, generate)


#: The models served, by name (iterate it for the names).
MODELS: Mapping[str, Model] = MappingProxyType(
    {
        model.name: model
        for model in (
            _model(IMAGE_TO_IMAGE, "qwen-image-to-image.json", edit_source_image),
            _model(TEXT_TO_IMAGE, "qwen-text-to-image.json", draw_from_prompt),
        )
    }
)
