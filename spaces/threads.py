"""How many threads a torch job should use on a machine it may share.

Torch's OpenMP threads spin while they wait for a core: two jobs that each ask for every core
of a 2-core machine starve each other (a trial measured 17 times slower than with one thread).
So the threads are chosen from the cores other programs leave free (:class:`ThreadChooser`),
and chosen again before every trial as the load changes: beside a busy program the search
runs one thread, and one thread has no OpenMP team to spin. (Telling OpenMP not to spin,
``OMP_WAIT_POLICY=PASSIVE``, was measured too: it made the search 1.6 times slower on an idle
machine, so it is not set; ``scripts/results/workers/shared-passive.md``.)

A thread count the user sets is obeyed (clamped to the cores this process may use, with a
note).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

__all__ = ["busy_cores", "cores", "CpuSample", "ThreadChooser"]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuSample:
    """The machine's busy and total CPU time and this process's own, at one moment."""

    busy_s: float
    total_s: float
    own_s: float
    wall_s: float

    @classmethod
    def now(cls) -> Optional[CpuSample]:
        """A sample from ``/proc/stat``; None where there is none."""
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
        t = os.times()
        return cls(busy_s=(total - idle) / tick, total_s=total / tick,
                   own_s=t.user + t.system + t.children_user + t.children_system,
                   wall_s=time.monotonic())


def busy_cores(before: CpuSample, after: CpuSample) -> float:
    """How many cores other processes kept busy between two samples (this process's own CPU
    time taken out)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    machine = after.busy_s - before.busy_s
    return max(0.0, (machine - (after.own_s - before.own_s)) / wall)


class ThreadChooser:
    """The threads for the next piece of work: ``requested`` when set (at most the cores this
    process may use), else the cores that other programs left free since the last choice (at
    least one).

    Args:
        requested: the user's thread count (``search.threads``), or None to choose.
        available: the cores (default: this process's CPU affinity).
    """

    def __init__(self, requested: Optional[int], available: Optional[int] = None,
                 window_s: float = 0.3) -> None:
        self.requested = requested
        self.available = available or cores()
        self.others = 0.0  # cores busy with other programs at the last choice
        self.last = CpuSample.now()
        if requested is None and self.last is not None and window_s > 0:
            time.sleep(window_s)  # a first look at the load, before any work of ours
            now = CpuSample.now()
            self.others, self.last = busy_cores(self.last, now), now

    def note(self) -> Optional[str]:
        """A line where a requested count is clamped."""
        if self.requested is not None and self.requested > self.available:
            return (f"search.threads={self.requested} is more than the {self.available} cores "
                    f"this process may use: using {self.available}")
        return None

    def choose(self) -> int:
        """Threads for the next piece of work (measuring the load since the last call)."""
        if self.requested is not None:
            return max(1, min(self.requested, self.available))
        now = CpuSample.now()
        if now is not None and self.last is not None and now.wall_s - self.last.wall_s > 0.2:
            self.others = busy_cores(self.last, now)
        if now is not None:
            self.last = now
        return max(1, min(self.available, round(self.available - self.others)))
