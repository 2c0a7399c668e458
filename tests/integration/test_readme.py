"""
README.md's snippets, run: every Python block executes, and every shell line is run here, checked as
Airflow would read it, or named below as run by another test. A snippet added without a way to run
it fails :func:`test_every_shell_line_is_run_or_accounted_for`.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import requests

from airflow.providers.common.compat.sdk import DAG, DagRunState

from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from tests.emulator.conftest import png
from tests.integration.test_example_dags import load_dag, task_states
from tests.system.ports import free_port

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Snippet:
    """A fenced block of README.md: its language, its text and the line its fence opens on."""

    language: str
    code: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def snippets(language: str) -> list[Snippet]:
    found, lines = [], README.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"```(\w*)", lines[index])
        if opening:
            end = lines.index("```", index + 1)
            if opening.group(1) == language:
                found.append(Snippet(language, "\n".join(lines[index + 1 : end]) + "\n", index + 1))
            index = end
        index += 1
    return found


def shell_lines() -> list[tuple[Snippet, str]]:
    return [
        (snippet, line.strip())
        for snippet in snippets("bash")
        for line in snippet.code.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def quickstart() -> Snippet:
    (dag_file,) = [snippet for snippet in snippets("python") if "def qwen_quickstart" in snippet.code]
    return dag_file


#: Shell lines run by another test or by CI, and lines that need what tests cannot have.
RUN_ELSEWHERE = {
    r"make demo\b.*": "tests/integration/test_catalog_demo.py runs the same DAG with `airflow dags test`",
    r"make (test|system-test|cluster-test|test-compat|lint)\b.*": "CI (.ci/run) runs these",
    r"make bench\b.*": "tests/benchmarks run each benchmark briefly",
    r"airflow dags test qwen_catalog_edit -c .*s3://.*": "needs the real Apikley and an S3 bucket",
    r"airflow dags test qwen_quickstart": "test_the_quickstart_dag_runs_as_a_user_saves_it",
    r"cat /tmp/qwen-quickstart/output/report\.csv": "test_the_quickstart_dag_runs_as_a_user_saves_it",
}
#: Shell lines this module runs or checks, by the test that does.
RUN_HERE = {
    r"make dist\b.*": "test_make_dist_builds_a_wheel_a_pip_user_can_install",
    r"pip install \"\$\(ls dist/.*": "test_make_dist_builds_a_wheel_a_pip_user_can_install",
    r"airflow providers list \| grep qwen.*": "test_airflow_lists_the_provider",
    r"python -m airflow_provider_qwen\.emulator .*": "test_the_emulator_starts_as_the_readme_says",
    r"export AIRFLOW_CONN_APIKLEY_DEFAULT=.*": "test_every_connection_snippet_makes_a_usable_connection",
    r"airflow connections add .*": "test_every_connection_snippet_makes_a_usable_connection",
    r"export AIRFLOW__DATABASE__EXTERNAL_DB_MANAGERS=.*": "test_the_db_manager_line_is_what_the_tests_migrate_with",
    r"airflow db migrate": "test_the_db_manager_line_is_what_the_tests_migrate_with",
}


def test_the_db_manager_line_is_what_the_tests_migrate_with():
    """The tests' ``airflow db migrate`` (``tests/integration/conftest.py``) runs with the README's line."""
    from importlib import import_module

    from airflow.utils.db_manager import BaseDBManager

    (export,) = [line for _, line in shell_lines() if line.startswith("export AIRFLOW__DATABASE__EXTERNAL_DB")]
    name, value = export.removeprefix("export ").split("=", 1)
    assert os.environ[name] == value
    module, _, class_name = value.rpartition(".")
    assert issubclass(getattr(import_module(module), class_name), BaseDBManager)


def test_every_shell_line_is_run_or_accounted_for():
    unaccounted = [
        f"{snippet}: {line}"
        for snippet, line in shell_lines()
        if not any(re.fullmatch(pattern, line) for pattern in (*RUN_ELSEWHERE, *RUN_HERE))
    ]
    assert not unaccounted, "README shell lines no test runs: " + "; ".join(unaccounted)


# ---- Python ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("snippet", [s for s in snippets("python") if "def qwen_quickstart" not in s.code], ids=str)
def test_every_python_snippet_runs(snippet, apikley, tmp_path, monkeypatch):
    """Each block alone, with its own imports, inside a DAG as a user would put it; uploads really upload."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "shoe.png").write_bytes(png())
    monkeypatch.chdir(tmp_path)
    code = compile(snippet.code, str(snippet), "exec")
    with DAG(f"readme_line_{snippet.line}", schedule=None):
        exec(code, {"__name__": f"readme_line_{snippet.line}"})


def test_the_result_snippet_has_the_keys_an_edit_returns(apikley, source_image_url):
    (shown,) = [s for s in snippets("python") if s.code.startswith("{") and '"apikley_task_id"' in s.code]
    result = QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=source_image_url).execute(
        {"ti": mock.Mock()}
    )
    assert ast.literal_eval(shown.code).keys() == result.keys()


def test_the_input_error_shown_is_the_one_raised():
    (shown,) = [s for s in snippets("") if s.code.startswith("Invalid QwenImageToImageInput")]
    operator = QwenImageToImageOperator(task_id="edit", prompt="p", image_url="https://x.test/a.png", strength=1.5)
    with pytest.raises(ValueError) as excinfo:
        operator.build_input()
    assert str(excinfo.value) == shown.code.strip()


@pytest.mark.dagrun
@pytest.mark.usefixtures("airflow_db")
def test_the_quickstart_dag_runs_as_a_user_saves_it(apikley, tmp_path, monkeypatch):
    dags = tmp_path / "dags"
    dags.mkdir()
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(dags))  # the folder ``dag.test()`` syncs DAGs from
    (dags / "qwen_quickstart.py").write_text(quickstart().code)
    output = tmp_path / "output"
    conf = {"photos": str(tmp_path / "photos"), "output_uri": f"file://{output}"}
    dag_run = load_dag("qwen_quickstart", dags).test(run_conf=conf)
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)

    rows = list(csv.DictReader((output / "report.csv").open()))
    assert len(rows) == 2 == apikley.state.accepted_creates  # the two drawn samples
    for row in rows:
        assert Path(row["stored"].removeprefix("file://")).parent == output / "edited"
        assert float(row["credits"]) == apikley.state.settings.cost_per_task
    assert all(row["source"].startswith(f"{apikley.base_url}/") for row in rows)  # uploaded to the emulator


# ---- shell ----------------------------------------------------------------------------------------


def test_every_connection_snippet_makes_a_usable_connection(monkeypatch):
    from airflow.cli.cli_parser import get_parser
    from airflow.models.connection import Connection

    checked = 0
    for snippet, line in shell_lines():
        if line.startswith("export AIRFLOW_CONN_"):
            name, value = shlex.split(line.removeprefix("export "))[0].split("=", 1)
            monkeypatch.setenv(name, value)
            conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
            expected_host = json.loads(value).get("host")
        elif line.startswith("airflow connections add"):
            args = get_parser().parse_args(shlex.split(line, posix=True)[1:])
            conn = Connection(
                conn_id=args.conn_id, conn_type=args.conn_type, host=args.conn_host, password=args.conn_password
            )
            monkeypatch.setenv(f"AIRFLOW_CONN_{args.conn_id.upper()}", conn.as_json())
            conn_id, expected_host = args.conn_id, args.conn_host
        else:
            continue
        settings = ApikleyHook(conn_id).settings
        assert settings.base_url == (expected_host or "https://api.apikley.ru"), f"{snippet}: {line}"
        assert settings.upload_base_url.startswith(settings.base_url), f"{snippet}: uploads go to another host"
        checked += 1
    assert checked >= 4


def test_the_emulator_starts_as_the_readme_says():
    (line,) = [line for _, line in shell_lines() if line.startswith("python -m airflow_provider_qwen.emulator")]
    argv = shlex.split(line.rstrip("&"))
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    key = argv[argv.index("--api-key") + 1]
    server = subprocess.Popen([sys.executable, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        answer = None
        for _ in range(100):
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{port}/api/v1/chat/credit", headers={"Authorization": f"Bearer {key}"}, timeout=2
                )
                break
            except requests.ConnectionError:
                if server.poll() is not None:
                    pytest.fail(f"the emulator exited: {server.stderr.read().decode()}")
                time.sleep(0.1)
        assert answer is not None and answer.json()["code"] == 200, answer and answer.text
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_make_dist_builds_a_wheel_a_pip_user_can_install(tmp_path):
    subprocess.run(["make", "-s", "dist", f"DIST_DIR={tmp_path / 'dist'}"], cwd=ROOT, check=True)
    (wheel,) = (tmp_path / "dist").glob("airflow_provider_qwen-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "airflow_provider_qwen/emulator/schema/qwen-image-to-image.json" in names
    migrations = "airflow_provider_qwen/api_server/migrations/"
    assert {f"{migrations}alembic.ini", f"{migrations}env.py", f"{migrations}script.py.mako"} <= set(names)
    assert any(name.startswith(f"{migrations}versions/0001_") for name in names)
    assert not any(name.startswith("dags/") for name in names)  # README says so
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    entry_points_text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "apache_airflow_provider" in entry_points_text
    assert "console_scripts" not in entry_points_text  # the emulator runs with python -m, with its extra

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import airflow_provider_qwen.emulator as e, airflow_provider_qwen as p; print(p.__file__)",
        ],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == str(target / "airflow_provider_qwen" / "__init__.py")


def test_airflow_lists_the_provider():
    listed = subprocess.run(
        [str(BIN / "airflow"), "providers", "list"], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    assert re.search(r"airflow-provider-qwen\s+\|?.*0\.1\.0", listed.stdout), listed.stdout
