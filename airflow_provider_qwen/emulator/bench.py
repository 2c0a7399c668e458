"""
How many recordInfo queries a second the emulator answers, beside a bare server in the same run.

``python -m airflow_provider_qwen.emulator.bench [--seconds 5] [--concurrency 64] [--no-baseline]``

Each server runs in its own process on a free loopback port; this process polls it with
``concurrency`` aiohttp loops over 100 known task ids. The baseline is a minimal aiohttp server
that answers every query with the same pre-encoded record, so the ratio shows what the emulator's
own work costs on this machine, whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import time
from collections.abc import Callable

import aiohttp

KEY = "bench-key"
TASKS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_emulator(port: int) -> None:
    import uvicorn

    from airflow_provider_qwen.emulator.app import create_app
    from airflow_provider_qwen.emulator.settings import EmulatorSettings

    # tasks stay waiting for the whole run: the benchmark measures status queries, not edits
    settings = EmulatorSettings(api_keys=[KEY], latency=(3600, 0, 0), create_rate_limit=10_000)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="error", lifespan="off")


def _serve_bare(port: int) -> None:
    from aiohttp import web

    body = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "0" * 32, "state": "waiting"}}).encode()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/jobs/recordInfo", answer)
    app.router.add_post("/api/v1/jobs/createTask", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def _wait_until_listening(session: aiohttp.ClientSession, base_url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            async with session.get(f"{base_url}/api/v1/jobs/recordInfo", params={"taskId": "x"}):
                return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def measure(base_url: str, seconds: float, concurrency: int) -> float:
    """RecordInfo answers per second from ``concurrency`` loops polling ``base_url`` for ``seconds``."""
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await _wait_until_listening(session, base_url)
        body = {"model": "qwen/image-to-image", "input": {"prompt": "x", "image_url": f"{base_url}/files/t/a.png"}}
        ids = []
        for _ in range(TASKS):
            async with session.post(f"{base_url}/api/v1/jobs/createTask", json=body) as response:
                ids.append((await response.json())["data"]["taskId"])
        done = 0
        deadline = time.perf_counter() + seconds

        async def poll(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() < deadline:
                params = {"taskId": ids[index % TASKS]}
                async with session.get(f"{base_url}/api/v1/jobs/recordInfo", params=params) as response:
                    if (await response.json())["code"] != 200:
                        raise RuntimeError("recordInfo did not answer 200")
                done += 1
                index += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(poll(offset) for offset in range(concurrency)))
        return done / (time.perf_counter() - started)


def run_against(server: Callable[[int], None], seconds: float, concurrency: int) -> float:
    """Start ``server`` in its own process on a free port, measure it, stop it."""
    port = _free_port()
    process = multiprocessing.get_context("spawn").Process(target=server, args=(port,), daemon=True)
    process.start()
    try:
        return asyncio.run(measure(f"http://127.0.0.1:{port}", seconds, concurrency))
    finally:
        process.terminate()
        process.join(10)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each server is polled")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent polling loops")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare aiohttp server")
    args = parser.parse_args(argv)
    emulator = run_against(_serve_emulator, args.seconds, args.concurrency)
    print(f"{'server':<28}{'recordInfo/s':>14}{'vs bare':>10}")
    if args.no_baseline:
        print(f"{'emulator (FastAPI+uvicorn)':<28}{emulator:>14.0f}{'-':>10}")
        return
    bare = run_against(_serve_bare, args.seconds, args.concurrency)
    print(f"{'emulator (FastAPI+uvicorn)':<28}{emulator:>14.0f}{emulator / bare:>10.2f}")
    print(f"{'bare aiohttp server':<28}{bare:>14.0f}{1.0:>10.2f}")


if __name__ == "__main__":
    main()
