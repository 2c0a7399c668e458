"""The public API says what it takes and returns: no parameter or return typed as bare ``Any``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import airflow_provider_qwen

#: Every module users import from (the emulator and the api-server plugin are applications, not API).
PUBLIC_MODULES = sorted(
    module.name
    for module in pkgutil.walk_packages(airflow_provider_qwen.__path__, "airflow_provider_qwen.")
    if not any(part.startswith("_") for part in module.name.split("."))
    and not module.name.startswith(("airflow_provider_qwen.emulator", "airflow_provider_qwen.api_server"))
)


def public_callables(module):
    """The module's own public functions, and the public methods of its own public classes."""
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value):
            yield name, value
        elif inspect.isclass(value):
            yield from public_callables_of_class(name, value)


def public_callables_of_class(name, klass):
    """The public methods of ``klass``, ``__init__``, and its classmethods, staticmethods and properties."""
    for method_name, member in vars(klass).items():
        if method_name.startswith("_") and method_name != "__init__":
            continue
        for function in functions_of(member):
            yield f"{name}.{method_name}", function


def functions_of(member):
    """The functions behind a class member: a method, a classmethod's or staticmethod's, a property's accessors."""
    if isinstance(member, classmethod | staticmethod):
        member = member.__func__
    if isinstance(member, property):
        return [accessor for accessor in (member.fget, member.fset) if inspect.isfunction(accessor)]
    return [member] if inspect.isfunction(member) else []


def bare_any(function) -> list[str]:
    """The parameters (and the return) of ``function`` annotated ``Any`` itself; ``**kwargs: Any`` is fine."""
    found = []
    for parameter in inspect.signature(function).parameters.values():
        variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        if parameter.annotation in ("Any", "typing.Any") and not variadic:
            found.append(parameter.name)
    if inspect.signature(function).return_annotation in ("Any", "typing.Any"):
        found.append("return")
    return found


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_no_public_signature_takes_or_returns_bare_any(module_name):
    module = importlib.import_module(module_name)
    offenders = {name: found for name, function in public_callables(module) if (found := bare_any(function))}
    assert offenders == {}


def test_classmethods_staticmethods_and_properties_are_looked_at():
    class Shapes:
        @classmethod
        def from_payload(cls, payload: Any) -> None: ...

        @staticmethod
        def parse(text: Any) -> None: ...

        @property
        def value(self) -> Any: ...

    found = {name: bare_any(function) for name, function in public_callables_of_class("Shapes", Shapes)}
    assert found == {"Shapes.from_payload": ["payload"], "Shapes.parse": ["text"], "Shapes.value": ["return"]}


def test_the_public_modules_are_found():
    assert {"airflow_provider_qwen.hooks.apikley", "airflow_provider_qwen.operators.qwen"} <= set(PUBLIC_MODULES)
