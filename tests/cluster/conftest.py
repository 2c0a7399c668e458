"""
One Airflow cluster for the cluster tests (``make cluster-test``): CeleryExecutor, two of each component.

The tests here run only when asked for, with ``-m cluster`` or by naming ``tests/cluster``; a
plain ``pytest`` (``make test``) deselects them, since they take minutes of both cores.

The cluster and the emulator are module-scoped and stopped on every way out, as the system
tests' are (SIGTERM turns into KeyboardInterrupt while they run). A failed test's report ends
with the last lines of every component's log.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import AirflowCluster
from tests.cluster.workload import DAGS, WORKER_CONCURRENCY, WorkloadEmulator
from tests.conftest import has_task_state_store
from tests.system.conftest import sigterm_raises_keyboard_interrupt, with_log_tails, write_measurements
from tests.system.ports import is_listening

HERE = Path(__file__).parent

#: What the tests measured, printed at the end of the session.
MEASUREMENTS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: starts an Airflow cluster (CeleryExecutor and two of each component); make cluster-test"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the cluster tests unless the run asked for them: ``-m cluster``, or only paths in ``tests/cluster``."""
    asked = "cluster" in (config.option.markexpr or "") or (
        config.args and all(Path(arg.split("::")[0]).resolve().is_relative_to(HERE) for arg in config.args)
    )
    if asked:
        return
    deselected = [item for item in items if item.get_closest_marker("cluster")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("cluster")]


@pytest.fixture(scope="module")
def cluster_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cluster's working directory; while it exists, SIGTERM stops the tests as Ctrl-C does."""
    if not has_task_state_store():
        pytest.skip("needs Airflow 3.3's task state store: before 3.3 a retry submits a new Apikley task by design")
    with sigterm_raises_keyboard_interrupt():
        yield tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def emulator(cluster_workdir: Path) -> Iterator[WorkloadEmulator]:
    """The emulator, each edit ~12 s, every callback signed and delivered twice (as Apikley may)."""
    with WorkloadEmulator(cluster_workdir) as running:
        yield running
    assert not is_listening(running.port), f"the emulator's port {running.port} is still taken"


@pytest.fixture(scope="module")
def cluster(cluster_workdir: Path, emulator: WorkloadEmulator) -> Iterator[AirflowCluster]:
    dags_folder = cluster_workdir / "dags"
    dags_folder.mkdir()
    for dag_file in DAGS:
        shutil.copy(dag_file, dags_folder / dag_file.name)
    env = {"AIRFLOW_CONN_APIKLEY_DEFAULT": emulator.airflow_connection()}
    with AirflowCluster(cluster_workdir, dags_folder, worker_concurrency=WORKER_CONCURRENCY, env=env) as running:
        yield running
    for port in running.ports():
        assert not is_listening(port), f"port {port} is still taken after the cluster stopped"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On a failed test, show the tail of each component's log in its report."""
    report = yield
    return with_log_tails(report, item, ("cluster", "emulator"))


def pytest_terminal_summary(terminalreporter) -> None:
    write_measurements(terminalreporter, "cluster test measurements", MEASUREMENTS)
