"""
One configuration of the triggerer capacity benchmark, measured in a process of its own.

``python -m benchmarks.triggerer_pollers PLAN CONFIGURATION N`` starts ``N`` pollers of one
configuration in one event loop, spread evenly over one poll interval, waits until each has polled
once, warms up, measures for the window and prints its figures as one JSON line.
:mod:`benchmarks.triggerer_capacity` runs it once per configuration and N, so every process starts
with a clean heap.

The configurations:

``provider``
    :class:`~airflow_provider_qwen.triggers.apikley.ApikleyTaskTrigger` as shipped (hooks borrow one
    aiohttp session per connection and event loop), each ``run()`` driven in its own asyncio task
    as Airflow's triggerer drives it.
``provider-session-per-trigger``
    The same triggers, with ``shared_sessions`` replaced so each trigger opens its own session.
``bare-shared-session``
    A plain aiohttp loop per poller making the same requests, through one shared session.
``bare-session-per-poller``
    The plain loop with one session per poller.
``provider-greenback-portal`` (only when asked for)
    The shipped triggers, each task first opening a greenback portal as Airflow's triggerer does
    unless ``AIRFLOW_DISABLE_GREENBACK_PORTAL`` is set: what the triggerer itself adds per trigger.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

PROVIDER = "provider"
PROVIDER_SESSION_PER_TRIGGER = "provider-session-per-trigger"
BARE_SHARED_SESSION = "bare-shared-session"
BARE_SESSION_PER_POLLER = "bare-session-per-poller"
PROVIDER_GREENBACK_PORTAL = "provider-greenback-portal"
#: Measured unless others are asked for.
CONFIGURATIONS = (PROVIDER, PROVIDER_SESSION_PER_TRIGGER, BARE_SHARED_SESSION, BARE_SESSION_PER_POLLER)
#: Measured only when asked for.
OPTIONAL_CONFIGURATIONS = (PROVIDER_GREENBACK_PORTAL,)
PROVIDER_CONFIGURATIONS = frozenset({PROVIDER, PROVIDER_SESSION_PER_TRIGGER, PROVIDER_GREENBACK_PORTAL})

RECORD_INFO_PATH = "/api/v1/jobs/recordInfo"
#: How often the lag ticker wakes up; its overshoot is the event loop's lag.
TICK_SECONDS = 0.05
#: States of a task that has not ended; any other answer means the measurement is off.
RUNNING_STATES = frozenset({"waiting", "queuing", "generating"})


@dataclass(frozen=True)
class Plan:
    """
    What every configuration polls, and for how long; written by the orchestrator as JSON.

    :param base_url: the emulator's base URL.
    :param headers: the headers the provider sends with a status query.
    :param timeout: seconds one request may take, as the provider's default.
    :param task_ids: unfinished tasks, one per poller (at least as many as the largest N).
    :param interval: seconds each poller waits between two polls.
    :param warmup: seconds of polling after every poller has polled once, before the window.
    :param window: seconds of measurement.
    """

    base_url: str
    headers: dict[str, str]
    timeout: float
    task_ids: list[str]
    interval: float
    warmup: float
    window: float

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read a plan the orchestrator wrote."""
        return cls(**json.loads(path.read_text()))


@dataclass
class PollCounter:
    """Polls made so far by all pollers of one process."""

    n: int
    succeeded: int = 0
    failed: int = 0
    pollers_polled: int = 0
    errors: list[str] = field(default_factory=list)

    def success(self, first: bool) -> None:
        """Count a poll that got a running task's record; ``first`` when it was the poller's first."""
        self.succeeded += 1
        if first:
            self.pollers_polled += 1

    def failure(self, error: BaseException | str) -> None:
        """Count a poll that failed, keeping the first few reasons."""
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(error if isinstance(error, str) else f"{type(error).__name__}: {error}")


@dataclass
class Figures:
    """What one process measured; printed as JSON for the orchestrator."""

    configuration: str
    n: int
    interval: float
    window: float
    polls_in_window: int
    polls_per_second: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    rss_before_bytes: int
    rss_steady_bytes: int
    rss_per_poller_bytes: float
    cpu_seconds: float
    cpu_per_poll_us: float
    seconds_until_all_polled: float
    polls_total: int
    failed_polls: int
    errors: list[str]


# ---- the event loop's lag ------------------------------------------------------------------------


class LagTicker:
    """Sleeps :data:`TICK_SECONDS` over and over, and while recording keeps by how much each sleep overshot."""

    def __init__(self) -> None:
        self.recording = False
        self.lags: list[float] = []

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            if self.recording:
                self.lags.append(time.perf_counter() - started - TICK_SECONDS)


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# ---- bare aiohttp pollers ------------------------------------------------------------------------


class BarePolls:
    """The provider's status query, made with nothing but aiohttp and ``json``."""

    def __init__(self, plan: Plan, counter: PollCounter) -> None:
        self.url = plan.base_url + RECORD_INFO_PATH
        self.headers = plan.headers
        self.timeout = aiohttp.ClientTimeout(total=plan.timeout)
        self.interval = plan.interval
        self.counter = counter

    async def poll_once(self, session: aiohttp.ClientSession, task_id: str) -> None:
        """One status query; raises when the answer is not a running task's record."""
        params = {"taskId": task_id}
        async with session.get(self.url, params=params, headers=self.headers, timeout=self.timeout) as response:
            answer = json.loads(await response.read())
        if answer.get("code") != 200 or answer["data"]["state"] not in RUNNING_STATES:
            raise RuntimeError(f"unexpected answer for {task_id}: {answer!r}")

    async def poll_forever(self, session: aiohttp.ClientSession, task_id: str) -> None:
        """Poll ``task_id`` every interval, counting each poll."""
        first = True
        while True:
            try:
                await self.poll_once(session, task_id)
            except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as err:
                self.counter.failure(err)
            else:
                self.counter.success(first)
                first = False
            await asyncio.sleep(self.interval)

    async def poll_with_own_session(self, task_id: str) -> None:
        """:meth:`poll_forever` through a session of this poller's own."""
        async with aiohttp.ClientSession() as session:
            await self.poll_forever(session, task_id)


# ---- provider triggers ---------------------------------------------------------------------------


def counting_hook_class(counter: PollCounter) -> type:
    """An :class:`ApikleyHook` that counts its status queries, to put in the hook module's place."""
    from airflow_provider_qwen.exceptions import ApikleyError
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    class CountingApikleyHook(ApikleyHook):
        polled = False

        async def aget_task(self, task_id: str, **kwargs: Any) -> Any:
            try:
                record = await super().aget_task(task_id, **kwargs)
            except ApikleyError as err:
                counter.failure(err)
                raise
            counter.success(not self.polled)
            self.polled = True
            return record

    return CountingApikleyHook


class SessionPerTrigger:
    """
    Stands in for ``shared_sessions``: every borrower gets a session of its own.

    A trigger's hook borrows and gives back from the trigger's own asyncio task, so the task tells
    whose session is given back.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[asyncio.Task, str], aiohttp.ClientSession] = {}

    async def acquire(self, conn_id: str) -> aiohttp.ClientSession:
        """Open a session for the calling trigger."""
        session = aiohttp.ClientSession()
        self._sessions[(asyncio.current_task(), conn_id)] = session
        return session

    async def release(self, conn_id: str) -> None:
        """Close the calling trigger's session."""
        session = self._sessions.pop((asyncio.current_task(), conn_id), None)
        if session is not None:
            await session.close()


def install_provider_patches(configuration: str, counter: PollCounter) -> None:
    """Count the triggers' polls and, for one session per trigger, replace the shared sessions."""
    import airflow_provider_qwen.hooks.apikley as hook_module

    hook_module.ApikleyHook = counting_hook_class(counter)  # the trigger imports it from there when it runs
    if configuration == PROVIDER_SESSION_PER_TRIGGER:
        hook_module.shared_sessions = SessionPerTrigger()


async def drive_trigger(trigger: Any, counter: PollCounter, portal: bool) -> None:
    """
    Iterate a trigger's events as the triggerer's ``run_trigger`` does; a task that never ends fires none.

    :param portal: open a greenback portal first, as the triggerer does by default.
    """
    if portal:
        import greenback

        await greenback.ensure_portal()
    async for event in trigger.run():
        counter.failure(f"trigger fired an event while its task runs: {event.payload!r}")


# ---- starting pollers ----------------------------------------------------------------------------


async def after(delay: float, poller: Callable[[], Awaitable[None]]) -> None:
    """Start ``poller`` after ``delay`` seconds, so the pollers' polls spread over the interval."""
    await asyncio.sleep(delay)
    await poller()


async def prime_provider(plan: Plan) -> None:
    """
    One status query through the provider, so what it loads on first use is not counted per trigger.

    Also checks that the bare loops send the headers the provider sends.
    """
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    hook = ApikleyHook()
    try:
        await hook.aget_task(plan.task_ids[0])
        sent = hook._aio_options["headers"]
    finally:
        await hook.aclose()
    if sent != plan.headers:
        raise RuntimeError(f"the provider sends headers {sent}, the bare loops would send {plan.headers}")


async def prime_bare(plan: Plan) -> None:
    """One bare status query, for the same reason as :func:`prime_provider`."""
    async with aiohttp.ClientSession() as session:
        await BarePolls(plan, PollCounter(1)).poll_once(session, plan.task_ids[0])


def provider_pollers(
    plan: Plan, n: int, counter: PollCounter, configuration: str
) -> list[Callable[[], Awaitable[None]]]:
    """One trigger per task, each waiting with the plan's fixed poll interval."""
    from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger

    portal = configuration == PROVIDER_GREENBACK_PORTAL
    triggers = [ApikleyTaskTrigger(task_id, poll_interval=plan.interval) for task_id in plan.task_ids[:n]]
    return [lambda trigger=trigger: drive_trigger(trigger, counter, portal) for trigger in triggers]


def bare_pollers(
    plan: Plan, n: int, counter: PollCounter, configuration: str, sessions: list[aiohttp.ClientSession]
) -> list[Callable[[], Awaitable[None]]]:
    """One bare loop per task, through one shared session or one session each."""
    polls = BarePolls(plan, counter)
    if configuration == BARE_SESSION_PER_POLLER:
        return [lambda task_id=task_id: polls.poll_with_own_session(task_id) for task_id in plan.task_ids[:n]]
    sessions.append(aiohttp.ClientSession())
    return [lambda task_id=task_id: polls.poll_forever(sessions[0], task_id) for task_id in plan.task_ids[:n]]


async def wait_until_every_poller_polled(counter: PollCounter, timeout: float) -> float:
    """Seconds until each poller has polled once; raises when that takes longer than ``timeout``."""
    started = time.perf_counter()
    while counter.pollers_polled < counter.n:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"only {counter.pollers_polled} of {counter.n} pollers polled within {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


def rss() -> int:
    """This process's resident memory after a full collection, in bytes."""
    gc.collect()
    return psutil.Process().memory_info().rss


def cpu_seconds() -> float:
    """CPU time this process has used, user and system."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


class Probe:
    """
    Looks closer at one measurement (allocations, profiles); told when each phase starts.

    The benchmark itself uses none: a probe costs time and memory of its own.
    """

    def before_pollers(self) -> None:
        """The pollers are about to start; the baseline has just been taken."""

    def window_started(self) -> None:
        """The measurement window starts."""

    def window_ended(self) -> None:
        """The measurement window has ended; the pollers still run."""


async def measure(plan: Plan, configuration: str, n: int, probe: Probe | None = None) -> Figures:
    """Start ``n`` pollers of ``configuration``, warm up, measure for the window, stop them."""
    probe = probe or Probe()
    counter = PollCounter(n)
    sessions: list[aiohttp.ClientSession] = []
    provider = configuration in PROVIDER_CONFIGURATIONS
    if provider:
        install_provider_patches(configuration, counter)
    await (prime_provider(plan) if provider else prime_bare(plan))
    ticker = LagTicker()
    ticker_task = asyncio.create_task(ticker.run())
    rss_before = rss()
    probe.before_pollers()

    if provider:
        pollers = provider_pollers(plan, n, counter, configuration)
    else:
        pollers = bare_pollers(plan, n, counter, configuration, sessions)
    tasks = [asyncio.create_task(after(index * plan.interval / n, poller)) for index, poller in enumerate(pollers)]
    until_all_polled = await wait_until_every_poller_polled(counter, timeout=2 * plan.interval + 60)
    await asyncio.sleep(plan.warmup)

    polls_at_start, cpu_at_start, started = counter.succeeded, cpu_seconds(), time.perf_counter()
    ticker.recording = True
    probe.window_started()
    await asyncio.sleep(plan.window)
    ticker.recording = False
    elapsed = time.perf_counter() - started
    polls, cpu = counter.succeeded - polls_at_start, cpu_seconds() - cpu_at_start
    probe.window_ended()
    rss_steady = rss()

    for task in [*tasks, ticker_task]:
        task.cancel()
    await asyncio.gather(*tasks, ticker_task, return_exceptions=True)
    for session in sessions:
        await session.close()
    return Figures(
        configuration=configuration,
        n=n,
        interval=plan.interval,
        window=elapsed,
        polls_in_window=polls,
        polls_per_second=polls / elapsed,
        lag_p50_ms=1000 * percentile(ticker.lags, 0.50),
        lag_p99_ms=1000 * percentile(ticker.lags, 0.99),
        lag_max_ms=1000 * max(ticker.lags, default=0.0),
        rss_before_bytes=rss_before,
        rss_steady_bytes=rss_steady,
        rss_per_poller_bytes=(rss_steady - rss_before) / n,
        cpu_seconds=cpu,
        cpu_per_poll_us=1e6 * cpu / polls if polls else float("nan"),
        seconds_until_all_polled=until_all_polled,
        polls_total=counter.succeeded,
        failed_polls=counter.failed,
        errors=counter.errors,
    )


def main(argv: list[str] | None = None) -> None:
    """Measure one configuration and print its figures as one JSON line."""
    plan_path, configuration, n = argv if argv is not None else sys.argv[1:]
    known = CONFIGURATIONS + OPTIONAL_CONFIGURATIONS
    if configuration not in known:
        raise SystemExit(f"unknown configuration {configuration!r}; known: {', '.join(known)}")
    figures = asyncio.run(measure(Plan.load(Path(plan_path)), configuration, int(n)))
    print(json.dumps(asdict(figures)))


if __name__ == "__main__":
    main()
