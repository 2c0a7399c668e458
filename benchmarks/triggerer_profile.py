"""
Where pollers spend memory and CPU: side runs of the triggerer capacity benchmark with probes.

``python -m benchmarks.triggerer_profile [--n 10000] [--probes gc memory cpu] [--configurations provider]``

Each probe runs in a fresh process of its own, since each distorts what the others measure:

``gc``
    The garbage collector's pauses in the window, by generation, and the objects it tracks per poller.
``gc-frozen``
    The same after ``gc.freeze()`` of everything loaded before the pollers (only when asked for):
    what a triggerer that froze its start-up heap would see.
``survivors``
    The objects made during the window and still alive at its end, by type, per poll: what
    outlives a poll ends up in the collector's oldest generation and lengthens its pauses.
``memory``
    ``tracemalloc``: the memory still held at the end of the window that was allocated after the
    baseline, per poller, by source line.
``cpu``
    ``cProfile`` over the window: the functions that cost the most, in microseconds per poll.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks.triggerer_capacity import BenchmarkError, prepared_plan, run_child
from benchmarks.triggerer_pollers import (
    CONFIGURATIONS,
    OPTIONAL_CONFIGURATIONS,
    PROVIDER,
    Figures,
    Plan,
    Probe,
    measure,
)

#: Rows of each ranking printed.
TOP = 20


class GcPauses(Probe):
    """Times every collection in the window, counts the garbage each finds and the objects the collector tracks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.recording = False
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.garbage: dict[int, int] = {0: 0, 1: 0, 2: 0}
        self._started = 0.0
        self.tracked_before = 0
        self.tracked_after = 0

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.recording:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)
            self.garbage[info["generation"]] += info["collected"]

    def before_pollers(self) -> None:
        """Count the tracked objects of the baseline and start timing collections."""
        self.tracked_before = len(gc.get_objects())
        gc.callbacks.append(self._on_collection)

    def window_started(self) -> None:
        """Keep the pauses from now on."""
        self.recording = True

    def window_ended(self) -> None:
        """Stop keeping pauses; count the tracked objects at steady state."""
        self.recording = False
        self.tracked_after = len(gc.get_objects())

    def report(self, figures: Figures) -> list[str]:
        """Pauses and garbage by generation, and tracked objects per poller."""
        polls = max(figures.polls_in_window, 1)
        lines = [
            f"{'generation':<12}{'collections':>12}{'per second':>12}{'total ms':>10}{'longest ms':>12}"
            f"{'ms per s':>10}{'garbage/poll':>14}"
        ]
        for generation, pauses in self.pauses.items():
            lines.append(
                f"{generation:<12}{len(pauses):>12}{len(pauses) / figures.window:>12.1f}"
                f"{1000 * sum(pauses):>10.0f}{1000 * max(pauses, default=0):>12.1f}"
                f"{1000 * sum(pauses) / figures.window:>10.0f}{self.garbage[generation] / polls:>14.1f}"
            )
        per_poller = (self.tracked_after - self.tracked_before) / self.n
        lines.append(
            f"objects the collector tracks: {self.tracked_before:,} before the pollers, "
            f"{self.tracked_after:,} at steady state ({per_poller:.1f} per poller)"
        )
        return lines


class GcPausesFrozenBaseline(GcPauses):
    """
    :class:`GcPauses` after ``gc.freeze()`` of everything loaded before the pollers start.

    What a triggerer that froze its heap once started (Airflow, its providers, the settings) would
    pay: the collector then walks the pollers' objects only.
    """

    def before_pollers(self) -> None:
        """Freeze the baseline, then count and time as :class:`GcPauses` does."""
        gc.freeze()
        super().before_pollers()


class Survivors(Probe):
    """Counts, by type, the tracked objects made during the window that are still alive at its end."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.before: set[int] = set()
        self.survivors: dict[str, int] = {}

    def window_started(self) -> None:
        """Remember every object tracked now."""
        gc.collect()
        self.before = {id(obj) for obj in gc.get_objects()}

    def window_ended(self) -> None:
        """Count the objects tracked now that were not at the start, once garbage is collected."""
        gc.collect()
        for obj in gc.get_objects():
            if id(obj) not in self.before:
                name = f"{type(obj).__module__}.{type(obj).__qualname__}"
                self.survivors[name] = self.survivors.get(name, 0) + 1

    def report(self, figures: Figures) -> list[str]:
        """The types that survive most, in objects per poll of the window."""
        polls = max(figures.polls_in_window, 1)
        total = sum(self.survivors.values())
        lines = [
            f"objects made in the window and alive at its end: {total / polls:.1f} per poll",
            f"{'per poll':>9}  type",
        ]
        for name, count in sorted(self.survivors.items(), key=lambda item: -item[1])[:TOP]:
            lines.append(f"{count / polls:>9.2f}  {name}")
        return lines


class HeldAllocations(Probe):
    """``tracemalloc`` from the baseline on; what is still held at the end of the window, per poller."""

    #: Frames kept per allocation: enough to reach the provider's code from inside aiohttp or pydantic.
    FRAMES = 40

    def __init__(self, n: int) -> None:
        self.n = n
        self.snapshot: tracemalloc.Snapshot | None = None

    def before_pollers(self) -> None:
        """Trace allocations from here on."""
        tracemalloc.start(self.FRAMES)

    def window_ended(self) -> None:
        """Take the snapshot while the pollers run."""
        self.snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        tracemalloc.stop()

    def report(self, figures: Figures) -> list[str]:
        """What holds the most, in bytes per poller: by the line that allocated it, and by the provider's line."""
        if self.snapshot is None:
            return ["no snapshot"]
        traces = self.snapshot.traces
        total = sum(trace.size for trace in traces)
        lines = [f"held since the baseline: {total / self.n:,.0f} bytes per poller (Python allocations only)"]
        by_allocating_line: dict[str, list[int]] = {}
        by_provider_line: dict[str, list[int]] = {}
        for trace in traces:
            for table, frame in ((by_allocating_line, trace.traceback[-1]), (by_provider_line, provider_frame(trace))):
                where = f"{short_path(frame.filename)}:{frame.lineno}" if frame else "(no provider frame)"
                size_and_count = table.setdefault(where, [0, 0])
                size_and_count[0] += trace.size
                size_and_count[1] += 1
        for heading, table in (("allocated at", by_allocating_line), ("innermost provider line", by_provider_line)):
            lines.append(f"{'bytes/poller':>13}{'blocks/poller':>15}  {heading}")
            for where, (size, count) in sorted(table.items(), key=lambda item: -item[1][0])[:TOP]:
                lines.append(f"{size / self.n:>13,.0f}{count / self.n:>15.1f}  {where}")
            lines.append("")
        return lines


def provider_frame(trace: tracemalloc.Trace) -> tracemalloc.Frame | None:
    """The innermost frame of an allocation that runs the provider's (or this benchmark's) code."""
    for frame in reversed(trace.traceback):  # the traceback runs from the oldest call to the newest
        if "airflow_provider_qwen/" in frame.filename or "benchmarks/" in frame.filename:
            return frame
    return None


class CpuProfile(Probe):
    """``cProfile`` over the window."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    def window_started(self) -> None:
        """Profile from now on."""
        self.profile.enable()

    def window_ended(self) -> None:
        """Stop profiling."""
        self.profile.disable()

    def report(self, figures: Figures) -> list[str]:
        """
        The costliest functions, by own time and by time including callees, in microseconds per poll.

        Times are wall-clock (cProfile's default, the cheapest timer): the own time of
        ``select.epoll.poll`` is the loop waiting, and a collection's pause is charged to whatever
        allocation set it off.
        """
        polls = max(figures.polls_in_window, 1)
        stats = pstats.Stats(self.profile)
        lines = []
        for key, heading in (("tottime", "own time"), ("cumtime", "including callees")):
            lines.append(f"{'us/poll':>9}  {heading}")
            ranked = sorted(stats.stats.items(), key=lambda item: item[1][2 if key == "tottime" else 3], reverse=True)
            for (filename, lineno, name), (_, _, tottime, cumtime, _) in ranked[:TOP]:
                seconds = tottime if key == "tottime" else cumtime
                lines.append(f"{1e6 * seconds / polls:>9.1f}  {short_path(filename)}:{lineno}({name})")
            lines.append("")
        return lines


PROBES = {
    "gc": GcPauses,
    "gc-frozen": GcPausesFrozenBaseline,
    "survivors": Survivors,
    "memory": HeldAllocations,
    "cpu": lambda _: CpuProfile(),
}


def short_path(filename: str) -> str:
    """A source path from the package root (``site-packages/`` and the repository are cut off)."""
    for marker in ("site-packages/", "/lib/python3", str(Path.cwd()) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def profile_one(plan_path: str, configuration: str, n: str, probe_name: str) -> None:
    """Measure one configuration with one probe in this process and print what it found."""
    plan, count = Plan.load(Path(plan_path)), int(n)
    probe = PROBES[probe_name](count)
    figures = asyncio.run(measure(plan, configuration, count, probe))
    print(
        f"== {configuration}, N={count:,}, probe {probe_name}: {figures.polls_per_second:.0f} polls/s, "
        f"lag p99 {figures.lag_p99_ms:.0f} ms, {figures.cpu_per_poll_us:.0f} us CPU/poll, "
        f"{figures.rss_per_poller_bytes / 1024:.1f} KB RSS/poller, {figures.failed_polls} failed polls"
    )
    print("\n".join(probe.report(figures)))


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of concurrent pollers")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of measurement per probe")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two polls of one poller")
    parser.add_argument("--probes", nargs="+", choices=list(PROBES), default=["gc", "memory", "cpu"])
    known = CONFIGURATIONS + OPTIONAL_CONFIGURATIONS
    parser.add_argument(
        "--configurations",
        nargs="+",
        choices=known,
        default=[PROVIDER],
        metavar="CONFIGURATION",
        help=f"configurations to look into, of {', '.join(known)} (default: {PROVIDER})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run each probe on each configuration, each in a fresh process, and print what they found."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        profile_one(*argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triggerer-profile-") as workdir:
        try:
            with prepared_plan(Path(workdir), args.n, args.interval, args.interval, args.window) as prepared:
                for configuration in args.configurations:
                    for probe in args.probes:
                        arguments = ["--child", str(prepared.path), configuration, str(args.n), probe]
                        print(run_child(prepared, "benchmarks.triggerer_profile", *arguments))
        except BenchmarkError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
