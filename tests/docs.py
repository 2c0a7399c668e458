"""
The fenced code blocks of README.md and of every page under docs/, for the tests that run them.

Tests find a block by what it contains, so a block may move between pages without its test
changing; :func:`snippets` names where each one is (``docs/guides/files.md:42``) for messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCUMENTS = (README, *sorted((ROOT / "docs").rglob("*.md")))

#: README's quickstart lies between these markers; the site's getting-started page includes it.
QUICKSTART_MARKERS = ("<!-- --8<-- [start:quickstart] -->", "<!-- --8<-- [end:quickstart] -->")


@dataclass(frozen=True)
class Snippet:
    """A fenced block: its language, its text, the file and the line its fence opens on."""

    language: str
    code: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(text: str, path: Path, first_line: int = 1) -> list[Snippet]:
    """Every fenced block of ``text``, in order; ``first_line`` is the line ``text`` starts on."""
    found, lines = [], text.splitlines()
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"```(\w*)", lines[index])
        if opening:
            end = lines.index("```", index + 1)
            code = "\n".join(lines[index + 1 : end]) + "\n"
            found.append(Snippet(opening.group(1), code, path, first_line + index))
            index = end
        index += 1
    return found


def snippets(language: str) -> list[Snippet]:
    """The blocks fenced as ``language`` ("" for a bare fence) in README.md and the docs."""
    return [
        snippet
        for path in DOCUMENTS
        for snippet in fenced_blocks(path.read_text(), path)
        if snippet.language == language
    ]


def quickstart_text() -> tuple[str, int]:
    """README's quickstart section, and the line it starts on."""
    text = README.read_text()
    start, end = (text.index(marker) for marker in QUICKSTART_MARKERS)
    return text[start:end], text[:start].count("\n") + 1


def quickstart_blocks() -> list[Snippet]:
    """The quickstart's blocks in the order a user meets them."""
    text, line = quickstart_text()
    return fenced_blocks(text, README, line)


def shell_lines() -> list[tuple[Snippet, str]]:
    """Every command line of every ``bash`` block (comments and blank lines left out)."""
    return [
        (snippet, line.strip())
        for snippet in snippets("bash")
        for line in snippet.code.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
