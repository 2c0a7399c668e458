"""The public API says what it takes and returns: no parameter or return typed as bare ``Any``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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
            for method_name, method in vars(value).items():
                if inspect.isfunction(method) and (not method_name.startswith("_") or method_name == "__init__"):
                    yield f"{name}.{method_name}", method


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


def test_the_public_modules_are_found():
    assert {"airflow_provider_qwen.hooks.apikley", "airflow_provider_qwen.operators.qwen"} <= set(PUBLIC_MODULES)
