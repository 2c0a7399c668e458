"""
Figures the tests measure, printed in sections of the terminal summary.

A test records a line with the ``measurement`` fixture. The line travels in its report's
``user_properties``, which pytest-xdist sends from the worker that ran the test to the process that
prints the summary, so the figures appear whether or not the run was split across workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

LINE, HEADER = "measurement: ", "measurement header: "

#: ``measurement(section, line, header=())``: record ``line`` under ``section``, which starts with ``header``.
Measurement = Callable[..., None]


@pytest.fixture
def measurement(request: pytest.FixtureRequest) -> Measurement:
    def record(section: str, line: str, header: Sequence[str] = ()) -> None:
        if header:
            request.node.user_properties.append((HEADER + section, "\n".join(header)))
        request.node.user_properties.append((LINE + section, line))

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    headers: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    for status in ("passed", "failed"):
        for report in terminalreporter.stats.get(status, []):
            if getattr(report, "when", None) != "call":
                continue
            for name, value in report.user_properties:
                if name.startswith(HEADER):
                    headers.setdefault(name.removeprefix(HEADER), value)
                elif name.startswith(LINE):
                    sections.setdefault(name.removeprefix(LINE), []).append(value)
    for title, lines in sections.items():
        terminalreporter.section(title)
        for line in [*headers.get(title, "").splitlines(), *lines]:
            terminalreporter.write_line(line)
