"""
Text from Apikley made safe to print: its control characters shown as escapes.

An answer's ``msg``, a task's ``failCode``/``failMsg`` and its ``model`` end up in terminals, task
logs and exception messages. A control character there would act instead of being read: ``ESC``
sequences clear a screen, rewrite earlier lines or set a terminal's clipboard (OSC 52), and a
newline forges a line of its own (a fake "credits consumed" line, a fake log record).
"""

from __future__ import annotations

import re

#: C0 controls (newline and tab too: each text this serves is shown on one line), DEL and C1 controls.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    r"""
    Return ``text`` with each control character written as its escape, ``ESC`` as ``\x1b``.

    Those are C0 (``\x00``-``\x1f``, newline and tab included), DEL and C1 (``\x80``-``\x9f``).
    Backslashes are left alone, so escaping escaped text changes nothing.
    """
    return CONTROL_CHARACTERS.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
