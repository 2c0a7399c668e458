"""
A round-robin TCP load balancer in front of the api-servers, as a cluster has one: ``[api] base_url``.

Each new connection goes to the next api-server in turn. One that refuses the connection (it is
restarting) is skipped for the next, as a load balancer's passive health check does, and never
sees the connection. Apikley's callbacks (``POST /apikley/callback``, one per connection) take
turns of their own, so they alternate strictly between the api-servers.

It logs one line per callback (``callback <api-server> <HTTP status>``) and one per skip
(``skipped <api-server>: <error>``): :func:`callbacks_by_backend` and :func:`skips_by_backend` count them.

Run as ``python -m tests.cluster.balancer --port P --backend api-server-a=8081 --backend api-server-b=8082``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import sys
from collections import Counter
from pathlib import Path

LOOPBACK = "127.0.0.1"
CALLBACK_REQUEST = b"POST /apikley/callback"
CHUNK_BYTES = 65536
CONNECT_TIMEOUT_SECONDS = 5.0

CALLBACK_LINE = re.compile(r"^callback (\S+) (\d{3}|none)$", re.MULTILINE)
SKIP_LINE = re.compile(r"^skipped (\S+):", re.MULTILINE)


class Balancer:
    """
    The balancer's state: the api-servers, and whose turn it is.

    :param backends: (name, port) of each api-server on 127.0.0.1.
    """

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._turns = itertools.count()
        self._callback_turns = itertools.count()

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Forward one client connection, both ways, to the api-server whose turn it is."""
        backend_writer = None
        try:
            first = await client_reader.read(CHUNK_BYTES)
            if not first:
                return
            is_callback = first.startswith(CALLBACK_REQUEST)
            connected = await self._connect(self._callback_turns if is_callback else self._turns)
            if connected is None:  # every api-server refused: the client sees the connection close
                log("callback none none" if is_callback else "no api-server took a connection")
                return
            name, backend_reader, backend_writer = connected
            backend_writer.write(first)
            on_answer = (lambda data: log(f"callback {name} {status_of(data)}")) if is_callback else None
            forwards = [
                asyncio.ensure_future(pipe(client_reader, backend_writer)),
                asyncio.ensure_future(pipe(backend_reader, client_writer, on_answer)),
            ]
            # HTTP clients do not half-close: once either side is done, the connection is.
            _, pending = await asyncio.wait(forwards, return_when=asyncio.FIRST_COMPLETED)
            for forward in pending:
                forward.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (client_writer, backend_writer):
                if writer is not None:
                    writer.close()

    async def _connect(self, turns: itertools.count) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None:
        first = next(turns)
        for offset in range(len(self.backends)):
            name, port = self.backends[(first + offset) % len(self.backends)]
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, port), CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError) as err:
                log(f"skipped {name}: {type(err).__name__}")
                continue
            return name, reader, writer
        return None


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_first=None) -> None:
    """Copy ``reader`` to ``writer`` until either end closes; ``on_first`` sees the first chunk."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK_BYTES):
            if on_first is not None:
                on_first(data)
                on_first = None
            writer.write(data)
            await writer.drain()


def status_of(answer: bytes) -> str:
    """The status code of an HTTP answer's first bytes (``HTTP/1.1 200 OK``)."""
    parts = answer.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) > 1 and parts[1].isdigit() else "none"


def log(line: str) -> None:
    print(line, flush=True)


def callbacks_by_backend(log_path: Path) -> Counter[tuple[str, str]]:
    """How many callbacks each api-server answered, by status: ``{("api-server-a", "200"): 180, ...}``."""
    return Counter(CALLBACK_LINE.findall(log_path.read_text()))


def skips_by_backend(log_path: Path) -> Counter[str]:
    """How many connections skipped each api-server because it refused them."""
    return Counter(SKIP_LINE.findall(log_path.read_text()))


def parse_backend(text: str) -> tuple[str, int]:
    name, _, port = text.partition("=")
    if not name or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PORT")
    return name, int(port)


async def serve(port: int, backends: list[tuple[str, int]]) -> None:
    server = await asyncio.start_server(Balancer(backends).handle, LOOPBACK, port)
    log(f"balancing {LOOPBACK}:{port} over {', '.join(f'{name} ({p})' for name, p in backends)}")
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    parser.add_argument("--backend", type=parse_backend, action="append", required=True, help="NAME=PORT")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.backend))


if __name__ == "__main__":
    sys.exit(main())
