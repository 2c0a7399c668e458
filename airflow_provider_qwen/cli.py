r"""
The ``apikley`` command: a connection's balance, one task's state and results, the local emulator.

It reads the Airflow connection as the hook does (so ``AIRFLOW_HOME``, ``AIRFLOW_CONN_*`` and any
secrets backend apply), and prints Apikley's errors as one line, never the API key. Airflow is
imported only when a command needs it: ``--help`` and ``--version`` never do, ``credits`` not for a
plain connection in ``AIRFLOW_CONN_<ID>`` (see :mod:`~airflow_provider_qwen.hooks.quick_credits`). What Apikley
says is printed with its control characters escaped (``ESC`` as ``\x1b``, a newline as ``\x0a``),
so an answer can neither drive the terminal nor forge a line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_provider_qwen import __version__
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.hooks.quick_credits import CreditAnswer, ask_credits
from airflow_provider_qwen.safe_text import escape_controls

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.models import TaskRecord

EMULATOR_EXTRA_MISSING = "apikley emulator needs the emulator extra: pip install 'airflow-provider-qwen[emulator]'"


def build_parser() -> argparse.ArgumentParser:
    """Return the ``apikley`` command line."""
    parser = argparse.ArgumentParser(
        prog="apikley",
        description="Ask Apikley about an Airflow connection's account and tasks, or run the local emulator.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--conn-id",
        default=DEFAULT_CONN_ID,
        help=f"the Airflow connection to Apikley, read as tasks read it (default: {DEFAULT_CONN_ID})",
    )
    commands.add_parser(
        "credits",
        parents=[connection],
        help="print the account's remaining credits",
        description="Print the account's remaining credits.",
    )
    task = commands.add_parser(
        "task",
        parents=[connection],
        help="print a task's state, results and cost",
        description="Print an Apikley task's state, result URLs, credits consumed, and failure when it failed.",
    )
    task.add_argument("apikley_task_id", metavar="TASK_ID", help="the Apikley task id")
    task.add_argument("--json", action="store_true", help="print Apikley's record of the task as JSON")
    commands.add_parser(
        "emulator",
        add_help=False,
        help="run the local Apikley emulator (the emulator extra); --help for its flags",
        description="Run the local Apikley emulator.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``apikley`` with ``argv`` (``sys.argv[1:]`` by default); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:  # its own flags, parsed by the emulator
        return run_emulator(argv[1:])
    args = build_parser().parse_args(argv)
    output = sys.stdout
    answered = ask_credits(args.conn_id) if args.command == "credits" else None
    if isinstance(answered, float):  # a plain connection's balance, asked without importing Airflow
        print(_credits_line(args.conn_id, answered), file=output)
        return 0
    # Airflow logs to stdout, from loggers made as it is imported: only the answer may go there
    with contextlib.redirect_stdout(sys.stderr):
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        from airflow_provider_qwen.exceptions import ApikleyError
        from airflow_provider_qwen.redaction import without_credentials

        try:
            answer = ask(args, answered)
        except ApikleyError as err:
            print(f"apikley {args.command}: {escape_controls(without_credentials(str(err)))}", file=sys.stderr)
            return 1
        except AirflowNotFoundException:
            print(f"apikley {args.command}: {escape_controls(_not_found(args.conn_id))}", file=sys.stderr)
            return 1
    print(answer, file=output)
    return 0


def ask(args: argparse.Namespace, answered: CreditAnswer | None = None) -> str:
    """
    Return what ``apikley credits`` or ``apikley task`` prints, asking Apikley through the hook.

    :param answered: for ``credits``, an answer already received without the hook, read as the hook
        reads its own; one that calls for a retry is asked again, with the hook's retries.
    """
    from airflow_provider_qwen.exceptions import ApikleyError
    from airflow_provider_qwen.hooks.retries import is_transient
    from airflow_provider_qwen.validation import check_task_id

    if args.command == "credits":
        hook = _hook(args.conn_id)
        if answered is not None:
            try:
                return _credits_line(args.conn_id, hook.read_credits(**dataclasses.asdict(answered)))
            except ApikleyError as err:
                if not is_transient(err):
                    raise
        return _credits_line(args.conn_id, hook.get_credits())
    task_id = check_task_id(args.apikley_task_id)  # before any request
    record = _hook(args.conn_id).get_task(task_id)
    return json.dumps(record.model_dump(mode="json"), indent=2) if args.json else describe(record)


def describe(record: TaskRecord) -> str:
    """Return a task's record as the lines ``apikley task`` prints, each of Apikley's texts on its line."""
    lines = [f"task {record.task_id}: {record.state.value}"]
    if record.model:
        lines.append(f"model: {escape_controls(record.model)}")
    lines += [f"result: {escape_controls(url)}" for url in record.result_urls]
    if record.fail_code or record.fail_message:
        failure = f"{record.fail_code or ''} {record.fail_message or ''}".rstrip()
        lines.append(f"failed: {escape_controls(failure)}")
    if record.credits_consumed is not None:
        lines.append(f"credits consumed: {record.credits_consumed:g}")
    return "\n".join(lines)


def run_emulator(argv: list[str]) -> int:
    """Serve the emulator in the foreground with the emulator's own flags; 2 without its extra."""
    try:
        from airflow_provider_qwen.emulator.__main__ import main as emulator_main
    except ImportError:
        print(EMULATOR_EXTRA_MISSING, file=sys.stderr)
        return 2
    emulator_main(argv, prog="apikley emulator")
    return 0


def _credits_line(conn_id: str, credits: float) -> str:
    return f"{conn_id}: {credits:g} credits"


def _not_found(conn_id: str) -> str:
    """Say where Airflow looked for connection ``conn_id`` from this command: never in its metadata database."""
    from airflow_provider_qwen.hooks.connection import secrets_backend_name

    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    backend = secrets_backend_name()
    looked = (
        f"the secrets backend {backend} and environment variable {variable}"
        if backend
        else f"environment variable {variable}"
    )
    if variable in os.environ:
        return (
            f"connection {conn_id!r} is not defined: Airflow looked in {looked}, "
            f"and could not read {variable} as a connection (a URI or JSON)"
        )
    return (
        f"connection {conn_id!r} is not defined: Airflow looked in {looked}. Outside its own services Airflow 3 "
        f"reads no connection from its metadata database (Admin → Connections): set {variable} in this shell"
    )


def _hook(conn_id: str) -> ApikleyHook:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook  # Airflow's configuration: loaded on use

    return ApikleyHook(conn_id)


if __name__ == "__main__":
    sys.exit(main())
