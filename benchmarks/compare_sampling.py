"""
What one DAG run costs the deployment, sampled while it runs: worker slots, CPU and memory of Airflow's processes.

:class:`RunSampler` asks the metadata database every ``interval`` seconds how many of the run's task
instances are ``running`` (each holds a LocalExecutor worker slot; a ``deferred`` one holds none) and
integrates that count over time into worker-slot-seconds. At the same moments it reads the CPU
times and RSS of the component processes (:class:`ProcessGroup`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

#: The prefix of the titles of LocalExecutor workers (``airflow worker -- LocalExecutor: ...``) and of
#: the task processes they supervise (``airflow worker -- <task instance id>``).
WORKER_TITLE = "airflow worker"
#: In the title of the process that starts LocalExecutor workers when the start method is ``forkserver``;
#: a child it just forked may not bear the worker title yet.
FORKSERVER_TITLE = "multiprocessing.forkserver"

FINAL_RUN_STATES = frozenset({"success", "failed"})

RUN_STATE_QUERY = """
SELECT ti.state, count(*) FROM task_instance ti WHERE ti.dag_id = %(dag_id)s AND ti.run_id = %(run_id)s
GROUP BY ti.state
UNION ALL
SELECT 'dag_run:' || dr.state, 0 FROM dag_run dr WHERE dr.dag_id = %(dag_id)s AND dr.run_id = %(run_id)s
"""


def process_title(process: psutil.Process) -> str:
    """The process's command line as ``ps`` shows it (Airflow retitles its processes), shortened."""
    try:
        title = " ".join(process.cmdline()).strip()
    except psutil.Error:
        return "(gone)"
    return title if len(title) <= 100 else title[:97] + "..."


def short_title(title: str) -> str:
    """A title without what changes from task to task, at most 60 characters."""
    title = title.split(": ", 1)[0] if title.startswith(WORKER_TITLE) else title
    return title if len(title) <= 60 else title[:57] + "..."


def children_of(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return process.children()
    return []


def is_executor_worker(process: psutil.Process, parent: psutil.Process) -> bool:
    """Whether ``process`` is a LocalExecutor worker: titled so, or forked by the executor's fork server."""
    return process_title(process).startswith(WORKER_TITLE) or FORKSERVER_TITLE in process_title(parent)


def split_workers(root: psutil.Process) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """
    ``root``'s process tree as (its own processes, the LocalExecutor workers in it).

    The walk stops at each worker: the task processes below it belong to the worker.
    """
    own: list[psutil.Process] = []
    workers: list[psutil.Process] = []
    pending = [root]
    while pending:
        process = pending.pop()
        own.append(process)
        for child in children_of(process):
            (workers if is_executor_worker(child, process) else pending).append(child)
    return own, workers


def own_cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU seconds of the process itself."""
    times = process.cpu_times()
    return times.user + times.system


def cpu_seconds_with_reaped_children(process: psutil.Process) -> float:
    """
    User and system CPU seconds of the process and of the children it has waited for.

    A LocalExecutor worker waits for each task process it supervises, so this counts every task
    process that ended, however short it lived.
    """
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class ProcessGroup:
    """
    CPU seconds and peak RSS of a changing set of processes, from samples.

    Processes are told apart by pid and start time, so a recycled pid is a new process. CPU counts
    from the first sample (the baseline) for processes alive then, and from zero for those that
    start later; a process that ends counts up to its last sample, so it loses at most one
    interval of CPU.

    :param members: the processes of the group right now.
    :param cpu_of: the CPU seconds to count for one process.
    """

    members: Callable[[], Iterable[psutil.Process]]
    cpu_of: Callable[[psutil.Process], float] = own_cpu_seconds
    baseline: dict[tuple[int, float], float] = field(default_factory=dict)
    latest: dict[tuple[int, float], float] = field(default_factory=dict)
    titles: dict[tuple[int, float], str] = field(default_factory=dict)
    peak_rss: int = 0
    started: bool = False

    def sample(self) -> None:
        """Read the CPU and RSS of every member now."""
        rss = 0
        for process in self.members():
            try:
                key = (process.pid, process.create_time())
                cpu = self.cpu_of(process)
                rss += process.memory_info().rss
            except psutil.Error:
                continue
            if not self.started:
                self.baseline[key] = cpu
            if key not in self.titles:
                self.titles[key] = process_title(process)
            self.latest[key] = cpu
        self.started = True
        self.peak_rss = max(self.peak_rss, rss)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the group used between the first sample and the last."""
        return sum(cpu - self.baseline.get(key, 0.0) for key, cpu in self.latest.items())

    def counted(self) -> list[str]:
        """What was counted: each distinct process title, with how many processes bore it."""
        counts = Counter(short_title(title) for title in self.titles.values())
        return [f"{count} x {title}" if count > 1 else title for title, count in sorted(counts.items())]


def component_members(root: Callable[[], psutil.Process]) -> Callable[[], list[psutil.Process]]:
    """A component's processes less the LocalExecutor workers and their task processes."""
    return lambda: split_workers(root())[0]


def worker_members(scheduler: Callable[[], psutil.Process]) -> Callable[[], list[psutil.Process]]:
    """The LocalExecutor's workers (not the task processes below them, which they reap)."""
    return lambda: split_workers(scheduler())[1]


@dataclass
class SlotUsage:
    """
    Task instances of one run by state, sampled, and the worker-slot-seconds they held.

    :ivar slot_seconds: the number of ``running`` task instances integrated over time (each sample's
        count times the time until the next sample).
    """

    slot_seconds: float = 0.0
    peak_running: int = 0
    peak_deferred: int = 0
    run_state: str | None = None
    samples: int = 0
    _last: tuple[float, int] | None = None

    def add(self, at: float, states: dict[str, int], run_state: str | None) -> None:
        """Count one sample taken at ``at`` (monotonic seconds)."""
        running = states.get("running", 0)
        if self._last is not None:
            last_at, last_running = self._last
            self.slot_seconds += last_running * (at - last_at)
        self._last = (at, running)
        self.peak_running = max(self.peak_running, running)
        self.peak_deferred = max(self.peak_deferred, states.get("deferred", 0))
        self.run_state = run_state
        self.samples += 1


class RunSampler:
    """
    Samples one DAG run until it ends, in a background thread.

    :param connect: opens a connection to the metadata database (a DB-API connection with ``%(name)s`` parameters).
    :param dag_id: the run's DAG.
    :param run_id: the run.
    :param groups: the process groups to sample, by name.
    :param interval: seconds between samples.
    """

    def __init__(
        self,
        connect: Callable[[], object],
        dag_id: str,
        run_id: str,
        groups: dict[str, ProcessGroup],
        interval: float = 0.2,
    ) -> None:
        self.connect = connect
        self.params = {"dag_id": dag_id, "run_id": run_id}
        self.groups = groups
        self.interval = interval
        self.slots = SlotUsage()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{dag_id}", daemon=True)

    def start(self) -> RunSampler:
        """Sample now (the CPU baseline, unless the groups were sampled before), then keep sampling."""
        for group in self.groups.values():
            group.sample()
        self._thread.start()
        return self

    def wait(self, timeout: float) -> str:
        """
        Wait until the run ends; return its state.

        :raises TimeoutError: when it is still going after ``timeout`` seconds.
        :raises RuntimeError: when sampling failed.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop()
            raise TimeoutError(f"run {self.params['run_id']} of {self.params['dag_id']} still going after {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"sampling failed: {self.error!r}") from self.error
        assert self.slots.run_state is not None
        return self.slots.run_state

    def stop(self) -> None:
        """Stop sampling (on the way out of a failed measurement)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            connection = self.connect()
            try:
                self._sample_until_run_ends(connection)
            finally:
                connection.close()
        except BaseException as err:
            self.error = err

    def _sample_until_run_ends(self, connection) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            states, run_state = self._run_states(connection)
            now = time.monotonic()
            for group in self.groups.values():
                group.sample()
            self.slots.add(now, states, run_state)
            if run_state in FINAL_RUN_STATES:
                return
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _run_states(self, connection) -> tuple[dict[str, int], str | None]:
        with connection.cursor() as cursor:
            cursor.execute(RUN_STATE_QUERY, self.params)
            rows = cursor.fetchall()
        states = {state: count for state, count in rows if state and not state.startswith("dag_run:")}
        run_state = next(
            (state.removeprefix("dag_run:") for state, _ in rows if state and state.startswith("dag_run:")), None
        )
        return states, run_state
