"""MkDocs hooks: pages take the tables the code generates, so the site cannot disagree with the code.

A page writes ``<!-- generated: NAME -->`` on a line of its own where the generated Markdown goes;
:data:`GENERATORS` names what each marker is filled with. An unknown marker fails the build.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import import_module

MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", flags=re.MULTILINE)

#: Marker name → ``"module:function"`` returning Markdown.
GENERATORS = {
    "connection-reference": "airflow_provider_qwen.connection_form:connection_reference_markdown",
    "cli-usage": "docs_hooks:cli_usage_markdown",
}


def cli_usage_markdown() -> str:
    """``apikley --help`` and each command's, as the installed command prints them."""
    import contextlib
    import io
    import os

    from airflow_provider_qwen.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width; the page's is fixed
    sections = []
    for argv in (["--help"], ["credits", "--help"], ["task", "--help"]):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
        sections.append(f"```text\n$ apikley {' '.join(argv)}\n{printed.getvalue().rstrip()}\n```\n")
    return "\n".join(sections)


def _generator(name: str) -> Callable[[], str]:
    module, _, function = GENERATORS[name].partition(":")
    return globals()[function] if module == "docs_hooks" else getattr(import_module(module), function)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        return _generator(name)().strip()

    return MARKER.sub(fill, markdown)
