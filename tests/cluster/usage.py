"""
CPU seconds and peak memory of each component of a running deployment, sampled in a thread.

A component is a set of processes (a session started by :class:`~tests.system.processes.ManagedProcess`,
or PostgreSQL's postmaster and its backends), and each start of it is a run of its own, told apart
by a key (its leader's pid): a restarted api-server counts both runs. A run's CPU is the largest
total seen of its live processes' own CPU plus the CPU of the children they have waited for, so a
task process or a parse process counts once it ends, however short it lived; a run that is killed
counts up to its last sample. Only what was used after :meth:`UsageSampler.start` counts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from tests.system.deployment import AirflowDeployment, EmulatorProcess
from tests.system.processes import session_members

#: Component name -> (key of its current run, its live processes), at the moment of asking.
Groups = Callable[[], dict[str, tuple[int, Iterable[psutil.Process]]]]


@dataclass
class Usage:
    """What one component used: CPU seconds, the peak of its processes' summed RSS, the most processes at once."""

    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    most_processes: int = 0


class UsageSampler:
    """
    Every ``interval`` seconds, the CPU and RSS of each group's processes; a context manager.

    :param groups: the components to sample, asked anew at every sample.
    :param interval: seconds between samples.
    """

    def __init__(self, groups: Groups, interval: float = 1.0) -> None:
        self._groups = groups
        self._interval = interval
        self._baseline: dict[tuple[str, int], float] = {}
        self._most_cpu: dict[tuple[str, int], float] = {}
        self.usage: dict[str, Usage] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)

    def __enter__(self) -> UsageSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Take the baseline sample, then keep sampling in a thread."""
        self.sample(baseline=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, after one last sample."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self, baseline: bool = False) -> None:
        """Read every group's processes now."""
        for name, (key, processes) in self._groups().items():
            cpu, rss, count = 0.0, 0, 0
            for process in processes:
                try:
                    times = process.cpu_times()
                    rss += process.memory_info().rss
                except psutil.Error:
                    continue
                cpu += times.user + times.system + times.children_user + times.children_system
                count += 1
            run = (name, key)
            if baseline:
                self._baseline[run] = cpu
            self._most_cpu[run] = max(cpu, self._most_cpu.get(run, 0.0))
            usage = self.usage.setdefault(name, Usage())
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, rss)
            usage.most_processes = max(usage.most_processes, count)
        for name, usage in self.usage.items():
            usage.cpu_seconds = sum(
                cpu - self._baseline.get(run, 0.0) for run, cpu in self._most_cpu.items() if run[0] == name
            )

    def table(self) -> list[str]:
        """A Markdown table of the usage, one row per component, and a total."""
        rows = ["| component | CPU s | peak RSS MiB | processes at most |", "|---|---:|---:|---:|"]
        for name, usage in sorted(self.usage.items()):
            rows.append(
                f"| {name} | {usage.cpu_seconds:.1f} | {usage.peak_rss_bytes / 2**20:.0f} | {usage.most_processes} |"
            )
        total_cpu = sum(usage.cpu_seconds for usage in self.usage.values())
        total_rss = sum(usage.peak_rss_bytes for usage in self.usage.values())
        rows.append(f"| all | {total_cpu:.1f} | {total_rss / 2**20:.0f} (sum of peaks) | |")
        return rows


def deployment_groups(deployment: AirflowDeployment, emulator: EmulatorProcess) -> Groups:
    """Each component of ``deployment`` (Redis and the balancer of a cluster too), its PostgreSQL, and ``emulator``."""

    def groups() -> dict[str, tuple[int, Iterable[psutil.Process]]]:
        found = {name: (process.pid, process.members()) for name, process in deployment.components().items()}
        found["emulator"] = (emulator.pid, session_members(emulator.pid))
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int((deployment.postgres.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            postmaster = psutil.Process(pid)
            found["postgres"] = (pid, [postmaster, *postmaster.children(recursive=True)])
        return found

    return groups
