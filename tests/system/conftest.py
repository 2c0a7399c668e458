"""
One deployment for all system tests: the emulator as its own process, PostgreSQL, and Airflow's components.

Both are stopped on every way out of the tests: fixture teardown runs on failures, on
KeyboardInterrupt, and on SIGTERM, which the fixtures turn into KeyboardInterrupt. When a test
fails, its report ends with the last lines of every component's log; the whole logs stay under
the test's temporary directory.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.system.airflow_env import openlineage_config
from tests.system.deployment import AirflowDeployment, EmulatorProcess
from tests.system.ports import is_listening

#: The system test's own DAGs, and the example DAGs it runs as users would.
SYSTEM_DAGS = sorted((Path(__file__).parent / "dags").glob("*.py"))
EXAMPLE_DAGS = [
    Path(__file__).parents[2] / "dags" / name for name in ("qwen_callback_edits.py", "qwen_catalog_edit.py")
]

#: The key the emulator signs its callbacks with, and the connection's ``webhook_secret``.
WEBHOOK_SECRET = "system-test-webhook-secret"

#: ``[apikley] callback_fallback_seconds`` on the deployment: longer than the edits of
#: tests/system/test_callback_waits.py take, so a wait whose callback was lost asks Apikley once.
CALLBACK_FALLBACK_SECONDS = 8

#: ``[core] parallelism``: far fewer worker slots than edits, which must not hold one while they wait.
PARALLELISM = 4

#: Seconds each emulated task spends waiting, queuing and generating (each ±20 % jitter).
GENERATION_LATENCY = (2.0, 4.0, 6.0)

#: The terminal summary's section of what the system tests measured (see ``tests/measurements.py``).
MEASUREMENTS_SECTION = "system test measurements"


@pytest.fixture(scope="package")
def system_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The deployment's working directory; while it exists, SIGTERM stops the tests as Ctrl-C does."""
    with sigterm_raises_keyboard_interrupt():
        yield tmp_path_factory.mktemp("system")


@contextmanager
def sigterm_raises_keyboard_interrupt() -> Iterator[None]:
    """
    Turn SIGTERM (a CI job's timeout, for one) into KeyboardInterrupt, so that fixture teardown
    still stops the processes; by default SIGTERM ends Python at once and orphans them.
    """
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="package")
def emulator(system_workdir: Path) -> Iterator[EmulatorProcess]:
    """
    The emulator, each task ~12 s from submitted to done, and a create rate limit that never binds.

    At the pace four worker slots submit, that keeps a dozen edits waiting in the triggerer when it is
    killed. The rate limit is the emulator's 20 per 10 s elsewhere: 429s and their retries are the
    fault suite's subject, and here they would only stretch the run.
    """
    with EmulatorProcess(
        system_workdir,
        latency=GENERATION_LATENCY,
        rate_limit=1000,
        callback_key=WEBHOOK_SECRET,
        extra_args=["--callback-twice"],  # as Apikley may: the receiver must record each edit once
    ) as running:
        yield running
    assert not is_listening(running.port), f"the emulator's port {running.port} is still taken"


@pytest.fixture(scope="package")
def deployment(system_workdir: Path, emulator: EmulatorProcess) -> Iterator[AirflowDeployment]:
    env = {"AIRFLOW_CONN_APIKLEY_DEFAULT": emulator.airflow_connection()}
    dags_folder = system_workdir / "dags"
    dags_folder.mkdir()
    for dag_file in SYSTEM_DAGS + EXAMPLE_DAGS:
        shutil.copy(dag_file, dags_folder / dag_file.name)
    env["QWEN_EDITS_OUTPUT_URI"] = f"file://{system_workdir}/callback-edits"
    # a lost callback ends its wait this long after the edit was submitted (tests/system/test_callback_waits.py)
    env["AIRFLOW__APIKLEY__CALLBACK_FALLBACK_SECONDS"] = str(CALLBACK_FALLBACK_SECONDS)
    env.update(openlineage_config(system_workdir / "airflow-home"))  # the path matrix compares lineage
    with AirflowDeployment(system_workdir, dags_folder, parallelism=PARALLELISM, env=env) as running:
        yield running
    for port in (running.settings.api_port, running.postgres.port):
        assert not is_listening(port), f"port {port} is still taken after the deployment stopped"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On a failed test, show the tail of each component's log in its report."""
    report = yield
    return with_log_tails(report, item, ("deployment", "emulator"))


def with_log_tails(report: pytest.TestReport, item: pytest.Item, fixtures: tuple[str, ...]) -> pytest.TestReport:
    """A failed test's report, with the last lines of the logs of each of ``fixtures`` the test used."""
    if report.failed:
        for name in fixtures:
            running = getattr(item, "funcargs", {}).get(name)
            if running is not None:
                report.sections.append((f"{name} logs (last lines)", running.log_tails()))
    return report


def write_measurements(terminalreporter, title: str, lines: list[str]) -> None:
    """Print what the tests measured, if anything, in a section of the terminal summary."""
    if lines:
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
