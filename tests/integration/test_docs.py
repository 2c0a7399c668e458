"""
The documentation's code, run: every Python block of README.md and docs/ executes, and every shell
line is run here, checked as Airflow would read it, or named below as run by another test. A block
added without a way to run it fails :func:`test_every_shell_line_is_run_or_accounted_for`.
README's quickstart runs verbatim, in order, in a fresh virtual environment with a fresh
``AIRFLOW_HOME`` (:func:`test_the_quickstart_runs_verbatim_in_a_fresh_venv`).
"""

from __future__ import annotations

import ast
import asyncio
import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
import requests
from PIL import Image, ImageChops, ImageStat

from airflow.providers.common.compat.sdk import DAG, TaskDeferred

from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from tests.docs import ROOT, Snippet, quickstart_blocks, quickstart_text, shell_lines, snippets
from tests.emulator.conftest import png
from tests.system.ports import free_port

pytestmark = [pytest.mark.integration]

BIN = Path(sys.executable).parent


def is_quickstart(snippet: Snippet) -> bool:
    return snippet in quickstart_blocks()


#: Shell lines run by another test or by CI, and lines that need what tests cannot have.
RUN_ELSEWHERE = {
    r"make demo\b.*": "tests/integration/test_catalog_demo.py runs the same DAG with `airflow dags test`",
    r"make (test|system-test|cluster-test|test-compat|canary|lint|docs)\b.*": "CI (.ci/run) runs these",
    r"make lock\b.*": "re-resolves constraints/ from the package index, on purpose only",
    r"make bench\b.*": "tests/benchmarks run each benchmark briefly",
    r"airflow dags test qwen_catalog_edit -c .*s3://.*": "needs the real Apikley and an S3 bucket",
    r"apikley credits( --conn-id \w+)?": "tests/loopback/test_cli.py",
    r"apikley task \S+( --json)?": "tests/loopback/test_cli.py",
    r"airflow db-manager downgrade \S+ --to-revision \w+": "tests/integration/test_db_manager.py",
}
#: Shell lines this module runs or checks, by the test that does.
RUN_HERE = {
    r"make dist\b.*": "test_the_quickstart_runs_verbatim_in_a_fresh_venv",
    r"pip install \"\$\(ls dist/.*": "test_the_quickstart_runs_verbatim_in_a_fresh_venv",
    r"airflow providers list \| grep qwen.*": "test_airflow_lists_the_provider",
    r"apikley emulator .*": "test_the_emulator_starts_as_the_docs_say",
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
        if not is_quickstart(snippet)
        and not any(re.fullmatch(pattern, line) for pattern in (*RUN_ELSEWHERE, *RUN_HERE))
    ]
    assert not unaccounted, "documented shell lines no test runs: " + "; ".join(unaccounted)


# ---- Python ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("snippet", [s for s in snippets("python") if not is_quickstart(s)], ids=str)
def test_every_python_snippet_runs(snippet, apikley, tmp_path, monkeypatch):
    """Each block alone, with its own imports, inside a DAG as a user would put it; uploads really upload."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "shoe.png").write_bytes(png())
    monkeypatch.chdir(tmp_path)
    code = compile(snippet.code, str(snippet), "exec")
    with DAG(f"docs_line_{snippet.line}", schedule=None):
        exec(code, {"__name__": f"docs_line_{snippet.line}"})


#: What Airflow 3 leaves out of a run's context, or sets to None, when the run has no logical date
#: (one triggered by hand or by an asset).
LOGICAL_DATE_NAMES = re.compile(
    r"\b(ds|ds_nodash|ts|ts_nodash|ts_nodash_with_tz|logical_date|execution_date|data_interval_start|"
    r"data_interval_end|prev_ds|next_ds|yesterday_ds|tomorrow_ds|prev_data_interval_start_success)\b"
)
DOCS_AND_DAGS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "dags").glob("*.py"))]


@pytest.mark.parametrize("path", DOCS_AND_DAGS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_template_shown_needs_a_logical_date(path):
    for template in re.findall(r"\{\{(.*?)\}\}", path.read_text()):
        without_filters = re.sub(r"\|\s*\w+", "", template)  # `| ds` formats a date; it is not the run's
        assert not LOGICAL_DATE_NAMES.search(without_filters), f"{path}: {{{{{template}}}}}"


@pytest.mark.dagrun
@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("logical_date", [None, datetime(2026, 3, 1, tzinfo=UTC)], ids=["manual", "scheduled"])
def test_the_batch_guides_output_path_renders_on_every_run(logical_date, tmp_path, monkeypatch):
    """A run triggered by hand or by an asset has no logical date; a scheduled one has one."""
    from tests.integration.test_example_dags import load_dag, xcom_values

    bundles = [{"name": "docs-render", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(tmp_path)}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))

    guide = [s for s in snippets("python") if s.path.name == "batch-operator.md"]
    (snippet,) = [s for s in guide if "QwenImageToImageBatchOperator(" in s.code]
    (output_path,) = re.findall(r'output_path="([^"]+)"', snippet.code)
    (tmp_path / "render_output_path.py").write_text(RENDER_DAG.format(template=output_path))
    dag = load_dag("render_output_path", tmp_path)
    dag_run = dag.test(run_after=datetime(2026, 3, 1, 6, tzinfo=UTC), logical_date=logical_date)
    assert xcom_values(dag_run, "render") == ["s3://my-bucket/edits/2026-03-01"]


LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
#: A DAG whose one task returns a template, rendered.
RENDER_DAG = """
from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1))
def render_output_path():
    @task
    def render(path: str) -> str:
        return path

    render("{template}")


render_output_path()
"""


def test_the_callback_events_documented_extra_is_the_one_recorded():
    from airflow_provider_qwen.api_server.callbacks import EVENT_EXTRA_FIELDS

    text = (ROOT / "docs" / "guides" / "callbacks.md").read_text()
    table = text[text.index("**From a callback**") : text.index("**From an edit task's `outlets`**")]
    documented = [
        key for row in re.findall(r"^\| (`.+?) \|", table, re.MULTILINE) for key in re.findall(r"`(\w+)`", row)
    ]
    assert documented == list(EVENT_EXTRA_FIELDS)


def test_the_result_snippet_has_the_keys_an_edit_returns(apikley, source_image_url):
    (shown,) = [s for s in snippets("python") if s.code.startswith("{") and '"apikley_task_id"' in s.code]
    result = QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=source_image_url).execute(
        {"ti": mock.Mock()}
    )
    assert ast.literal_eval(shown.code).keys() == result.keys()


def test_the_trigger_guides_operator_defers_and_returns_an_edit(apikley, source_image_url):
    (snippet,) = [s for s in snippets("python") if "class SharpenOperator" in s.code]
    namespace = {"__name__": "docs_trigger_guide"}
    with DAG("docs_trigger_guide", schedule=None):
        exec(compile(snippet.code, str(snippet), "exec"), namespace)
    operator = namespace["sharpen"]
    operator.image_url = source_image_url  # the emulator's copy of a source image
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": mock.Mock()})

    async def first_event():
        async for event in deferred.value.trigger.run():
            return event.payload

    result = operator.execute_complete({}, asyncio.run(first_event()))
    assert result["state"] == "success" and result["result_urls"], result
    sent = {"prompt": "sharpen, crisp details", "image_url": source_image_url}
    assert sent in [request.json()["input"] for request in apikley.seen("createTask")]


def test_the_input_error_shown_is_the_one_raised():
    (shown,) = [s for s in snippets("") if s.code.startswith("Invalid QwenImageToImageInput")]
    operator = QwenImageToImageOperator(task_id="edit", prompt="p", image_url="https://x.test/a.png", strength=1.5)
    with pytest.raises(ValueError) as excinfo:
        operator.build_input()
    assert str(excinfo.value) == shown.code.strip()


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


def test_the_emulator_starts_as_the_docs_say():
    """Each documented ``apikley emulator`` line (the port made free) serves the balance it was given."""
    lines = [line for s, line in shell_lines() if line.startswith("apikley emulator") and not is_quickstart(s)]
    assert lines
    for line in lines:
        argv = shlex.split(line.rstrip("&"))
        port = free_port()
        argv[argv.index("--port") + 1] = str(port)
        key, credits = argv[argv.index("--api-key") + 1], float(argv[argv.index("--credits") + 1])
        server = subprocess.Popen([str(BIN / "apikley"), *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            answer = None
            for _ in range(100):
                try:
                    answer = requests.get(
                        f"http://127.0.0.1:{port}/api/v1/chat/credit",
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=2,
                    )
                    break
                except requests.ConnectionError:
                    if server.poll() is not None:
                        pytest.fail(f"the emulator exited: {server.stderr.read().decode()}")
                    time.sleep(0.1)
            assert answer is not None and answer.json()["data"] == credits, answer and answer.text
        finally:
            server.terminate()
            server.wait(10)


def test_airflow_lists_the_provider():
    listed = subprocess.run(
        [str(BIN / "airflow"), "providers", "list"], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    assert re.search(r"airflow-provider-qwen\s+\|?.*0\.1\.0", listed.stdout), listed.stdout


# ---- the quickstart, verbatim -----------------------------------------------------------------------

#: The emulator's port in the quickstart, made this run's own.
QUICKSTART_PORT = "8089"
#: The one folder the quickstart keeps everything in: its venv, AIRFLOW_HOME, photos and results.
QUICKSTART_FOLDER = "~/qwen-quickstart"
#: A path in the quickstart's text or DAG: absolute, or under the home folder.
PATH_IN_TEXT = re.compile(r"(?<![\w.:/$}])~?/[\w.-]+(?:/[\w.-]+)*")


def test_the_quickstart_keeps_everything_under_one_folder():
    text, _ = quickstart_text()
    paths = PATH_IN_TEXT.findall(text)
    assert "~/qwen-quickstart/venv" in paths
    assert [path for path in paths if not path.startswith(QUICKSTART_FOLDER)] == []
    (dag,) = [block.code for block in quickstart_blocks() if block.language == "python"]
    assert 'Path.home() / "qwen-quickstart"' in dag and "/tmp" not in dag


def quickstart_script(port: int) -> tuple[str, Path]:
    """The quickstart's commands as one bash script, and where the text tells the user to save the DAG."""
    text, _ = quickstart_text()
    (dag_path,) = re.findall(r"Save this DAG as `([^`]+)`", text)
    parts = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
        # pip, as uv's pip from the suite's cache: the same packages, resolved in seconds
        'pip() { "$QUICKSTART_UV" pip "$@" --python "$VIRTUAL_ENV/bin/python" --quiet; }',
    ]
    for block in quickstart_blocks():
        if block.language == "bash":
            parts.append(block.code)
        elif block.language == "python":
            parts.append(f"cat > \"{dag_path}\" <<'QUICKSTART_DAG'\n{block.code}QUICKSTART_DAG")
        else:
            raise AssertionError(f"{block}: a quickstart block this test cannot run ({block.language!r})")
    script = "\n".join(parts).replace(QUICKSTART_PORT, str(port))
    return script, Path(dag_path)


def wheel_entry_points(wheel: Path) -> str:
    names = zipfile.ZipFile(wheel).namelist()
    return zipfile.ZipFile(wheel).read(next(name for name in names if name.endswith("entry_points.txt"))).decode()


def mean_difference(first: Path, second: Path) -> float:
    """Mean absolute difference per channel, 0-255, between two images of one size."""
    images = [Image.open(path).convert("RGB") for path in (first, second)]
    return sum(ImageStat.Stat(ImageChops.difference(*images)).mean) / 3


@pytest.mark.slow
@pytest.mark.fresh_venv
def test_the_quickstart_runs_verbatim_in_a_fresh_venv(tmp_path):
    """A new user's first session: README's commands in order, nothing installed or configured before."""
    home = tmp_path / "home"
    home.mkdir()
    files = home / "qwen-quickstart"  # the quickstart's one folder, under this run's own home
    script, _ = quickstart_script(free_port())
    uv = BIN / "uv"
    uv_cache = subprocess.run([str(uv), "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()
    venv_bin = str(BIN)
    # the user's shell: this machine's settings (certificates, package index), none of the suite's
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "PYTEST", "_AIRFLOW")) and name not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d != venv_bin),
        QUICKSTART_UV=str(uv),
        UV_CACHE_DIR=uv_cache,
    )
    # the releases the suite was locked to (make lock), unless the next-Airflow canary asks for the newest
    if os.environ.get("QWEN_UNLOCKED") != "1":
        env["UV_CONSTRAINT"] = str(ROOT / "constraints" / "dev.txt")
    run = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-5000:]}"

    (wheel,) = (ROOT / "dist").glob("airflow_provider_qwen-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "airflow_provider_qwen/emulator/schema/qwen-image-to-image.json" in names
    migrations = "airflow_provider_qwen/api_server/migrations/"
    assert {f"{migrations}alembic.ini", f"{migrations}env.py", f"{migrations}script.py.mako"} <= set(names)
    assert not any(name.startswith("dags/") for name in names)  # README says so
    assert "apikley = airflow_provider_qwen.cli:main" in wheel_entry_points(wheel)
    assert "apikley-emulator" not in wheel_entry_points(wheel)

    # the balance before and after: one credit per edit, both shown
    balances = [float(found) for found in re.findall(r"^apikley_default: ([\d.]+) credits$", run.stdout, re.MULTILINE)]
    assert len(balances) == 2 and balances[0] - balances[1] == 2.0, run.stdout
    rows = list(csv.DictReader(io.StringIO((files / "output" / "report.csv").read_text())))
    assert len(rows) == 2 and all(float(row["credits"]) == 1.0 for row in rows), rows
    assert "apikley_task_id,source,stored,sha256,credits" in run.stdout  # `cat` showed the report
    # the edit is visible: each result differs from its source by far more than encoding noise
    sources = {path.stem: path for path in (files / "photos").glob("*.png")}
    for row in rows:
        stored = Path(row["stored"].removeprefix("file://"))
        assert stored.parent == files / "output" / "edited" and stored.name in run.stdout  # `ls` listed it
        source = next(path for stem, path in sources.items() if stem in row["source"])
        assert mean_difference(source, stored) > 15, row
