"""
Shared test setup: an isolated AIRFLOW_HOME, an Apikley connection with a recognisable key, and
one emulator for the whole run.

Every test that speaks HTTP to Apikley speaks to the emulator (:func:`apikley`); a test that needs
one exact answer queues it with ``apikley.script(...)`` (see :mod:`airflow_provider_qwen.emulator.script`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# Airflow reads its configuration at import time: point it at a throw-away home first, one per
# pytest-xdist worker (a worker inherits the home its controller made, SQLite database included).
if "AIRFLOW_HOME" not in os.environ or (
    "PYTEST_XDIST_WORKER" in os.environ and os.environ["AIRFLOW_HOME"] == os.environ.get("QWEN_TESTS_AIRFLOW_HOME")
):
    _airflow_home = tempfile.TemporaryDirectory(prefix="airflow-home-")  # removed when pytest exits
    os.environ["AIRFLOW_HOME"] = os.environ["QWEN_TESTS_AIRFLOW_HOME"] = _airflow_home.name
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
# The provider's DB manager as Airflow 3.1 needs it, configured (3.2+ also finds it in the provider
# info, which the system deployment, configured apart, relies on).
os.environ.setdefault(
    "AIRFLOW__DATABASE__EXTERNAL_DB_MANAGERS", "airflow_provider_qwen.api_server.db_manager.ApikleyDBManager"
)

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_qwen.emulator import EmulatorSettings, RunningEmulator, run_emulator
from airflow_provider_qwen.hooks.retries import RetryPolicy

#: More fixtures: ``s3``, a bucket on a real S3 API (moto's server) on loopback; ``measurement``, figures
#: printed in the terminal summary.
pytest_plugins = ["tests.s3", "tests.measurements"]

#: The real backoff, kept before ``no_retry_waits`` replaces it, for the tests of the backoff itself.
REAL_RETRY_WAIT = RetryPolicy.wait_seconds

API_KEY = "sk-test-LEAKCANARY-0123456789abcdef"


def has_task_state_store() -> bool:
    """Airflow 3.3 keeps task state across tries, which is what lets a retry resume a submitted edit."""
    from packaging.version import Version

    from airflow import __version__ as airflow_version

    return Version(airflow_version) >= Version("3.3")


BASE_URL = "http://apikley.test"


SYSTEM_TESTS = Path(__file__).parent / "system"
#: The system test modules that share a second deployment. Under pytest-xdist each group of system
#: modules is one unit, with a deployment of its own, so two workers run them at once; the split
#: balances their time (``--durations`` on three workers: about 350 s each, each deployment's start included).
SECOND_DEPLOYMENT_MODULES = frozenset({"test_callback_waits.py", "test_paths.py", "test_review.py", "test_ui.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the system tests first: under pytest-xdist, one worker starts on them at once."""
    items.sort(key=lambda item: not item.path.is_relative_to(SYSTEM_TESTS))  # stable: the rest keeps its order


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """
    Under pytest-xdist (``make test``), hand out whole modules, whose module-scoped set-up then runs
    once, and the system tests as two units, each on a deployment of its own
    (:data:`SECOND_DEPLOYMENT_MODULES`): two workers start on them while the others take everything
    else, and take more once their unit is nearly done. ``--no-loadscope-reorder`` keeps the
    collection's order.
    """
    from xdist.scheduler import LoadScopeScheduling

    system = SYSTEM_TESTS.relative_to(config.rootpath).as_posix() + "/"

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if not module.startswith(system):
                return module
            return system + ("second" if module.removeprefix(system) in SECOND_DEPLOYMENT_MODULES else "first")

    return ModuleScheduling(config, log)


@pytest.fixture(autouse=True)
def apikley_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """``apikley_default`` pointing at a fake host, as a user would set it in the environment."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_DEFAULT",
        json.dumps({"conn_type": "apikley", "host": BASE_URL, "password": API_KEY}),
    )


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries happen as in production, without the sleeps."""
    monkeypatch.setattr(RetryPolicy, "wait_seconds", lambda self, failures, error: 0.0)


#: The public address that the tests' made-up host names resolve to (no DNS is reached).
TEST_HOST_ADDRESS = "93.184.215.14"


@pytest.fixture(autouse=True)
def test_hosts_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made-up names (``*.test``, ``*.example.org``: the mocked hosts) resolve to a public address."""
    import socket

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith((".test", "example.org", "example.com")):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (TEST_HOST_ADDRESS, port or 0))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr("airflow_provider_qwen.hooks.downloads.socket.getaddrinfo", getaddrinfo)


#: The key the emulator tests use (the provider's tests use :data:`API_KEY`).
EMULATOR_KEY = "emulator-test-key"


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[RunningEmulator]:
    """One emulator on a free loopback port for the whole run; each test's fixture resets it."""
    with run_emulator(EmulatorSettings(api_keys=[EMULATOR_KEY, API_KEY])) as running:
        yield running


@pytest.fixture
def apikley(shared_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    """
    The emulator, reset, with ``apikley_default`` pointing at it.

    Tasks take about 0.1 s (waiting, queuing, generating: 0.02 + 0.02 + 0.05 s); draws repeat.
    """
    shared_emulator.state.settings = EmulatorSettings(
        api_keys=[API_KEY], latency=(0.02, 0.02, 0.05), jitter=0.0, random_seed=1
    )
    shared_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", shared_emulator.airflow_connection())
    yield shared_emulator
    shared_emulator.reset()  # stop what the test left running: tasks, callbacks


def submit_edit(image_url: str, **input_fields: object) -> str:
    """Create a real Qwen edit of ``image_url`` through ``apikley_default``; return its task id."""
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    return ApikleyHook().create_task("qwen/image-to-image", {"prompt": "sepia", "image_url": image_url, **input_fields})


@pytest.fixture
def source_image_url(apikley: RunningEmulator) -> str:
    """A small PNG the emulator serves, to edit."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), "#2c7fb8").save(buffer, format="PNG")
    return apikley.put_file("tests/shoe.png", buffer.getvalue(), "image/png")


#: The ``input`` schema Apikley publishes for the Qwen model, read once.
QWEN_INPUT_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "airflow_provider_qwen/emulator/schema/qwen-image-to-image.json").read_text()
)["properties"]["input"]

#: The two operators that run an edit: the typed Qwen one, and the generic one given the same input.
OPERATOR_KINDS = ("qwen", "generic")


def edit_operator(kind: str, mixin: type | None = None, **arguments: Any):
    """
    An edit by the operator of ``kind``: ``arguments`` as the Qwen operator takes them; for the
    generic operator, its input fields become ``input``, checked against the model's published schema.
    With ``mixin``, a team's subclass of that operator, with ``mixin`` first among its bases.
    """
    from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
    from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator
    from airflow_provider_qwen.operators.qwen import INPUT_FIELDS, QwenImageToImageOperator

    base = QwenImageToImageOperator if kind == "qwen" else ApikleyCreateTaskOperator
    operator = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {}) if mixin else base
    if kind == "qwen":
        return operator(**arguments)
    fields = {name: arguments.pop(name) for name in INPUT_FIELDS if name in arguments}
    return operator(
        model=QWEN_IMAGE_TO_IMAGE,
        input={name: value for name, value in fields.items() if value is not None},
        input_schema=QWEN_INPUT_SCHEMA,
        **arguments,
    )


def recording_xcom_set(calls: list[dict], error: Exception | None = None):
    """
    A stand-in for the Task SDK's ``XCom.set`` with its real signature, recording each push in ``calls``.

    The signature matters: the provider pushes from a trigger only through an ``XCom.set`` that names
    the mapped-length argument (see ``_compat.trigger_xcom_set``).
    """

    def xcom_set(key, value, dag_id, task_id, run_id, map_index=-1, _mapped_length=None):
        if error is not None:
            raise error
        calls.append(
            {"key": key, "value": value, "dag_id": dag_id, "task_id": task_id, "run_id": run_id}
            | {"map_index": map_index, "_mapped_length": _mapped_length}
        )

    return xcom_set
