"""The no-I/O tier: a test here that opens a network connection fails (``tests/loopback`` may)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"a test in tests/unit connected to {address!r}: it belongs in tests/loopback")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
