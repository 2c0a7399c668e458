"""
The docs' prose shows what it says: text like ``<base URL>`` outside code is read as an HTML tag,
which Markdown passes through and the browser hides, so the reader sees "Connected to : N credits".
"""

from __future__ import annotations

import re

import pytest

from tests.docs import DOCUMENTS, ROOT

#: Markup meant as it is: HTML comments (the generated-block and snippet markers) and Markdown's
#: autolinks (``<https://...>``), which render as links.
MEANT = re.compile(r"<!--.*?-->|<https?://[^>\s]+>", re.DOTALL)
#: What a browser takes for a tag: ``<`` then a letter or ``/``, up to the next ``>``.
TAG = re.compile(r"</?[A-Za-z][^<>\n]*>")
FENCE = re.compile(r"^[ \t]*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.DOTALL)


def prose(text: str) -> str:
    """``text`` without its fenced blocks, inline code spans and the markup meant as it is."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return CODE_SPAN.sub("", MEANT.sub("", "\n".join(kept)))


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_prose_holds_text_a_browser_takes_for_an_html_tag(path):
    assert TAG.findall(prose(path.read_text())) == []


def test_a_placeholder_in_prose_is_caught_and_one_in_code_is_not():
    text = 'shows "Connected to <base URL>: N" and `<base URL>`\n```bash\necho "<your key>"\n```\n<!-- note -->'
    assert TAG.findall(prose(text)) == ["<base URL>"]


def test_the_generated_connection_table_holds_no_html_tag_either():
    from airflow_provider_qwen.connection_form import connection_reference_markdown

    assert TAG.findall(prose(connection_reference_markdown())) == []
