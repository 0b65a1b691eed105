"""Which worker runs a trial, and whether it is still alive.

Every storage records on each running trial which worker runs it (host, machine id, boot, pid
and the process's start time: the trial system attribute ``edgenas:worker``), so a trial
whose worker died on this machine is found at once, however the worker died (a killed
process, a reboot); workers on other machines are left to the heartbeat.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["dead_worker_trials", "DeadWorkerCheck", "this_host", "this_worker", "WORKER_ATTR",
           "worker_dead", "WorkerRecords"]

WORKER_ATTR = "edgenas:worker"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (Linux)."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[19])


def this_host() -> dict:
    """Which machine this is: its host name (``EDGENAS_WORKER_HOST`` overrides it, e.g. for
    containers that share a host name), machine id and boot."""
    return {"host": os.environ.get("EDGENAS_WORKER_HOST") or socket.gethostname(),
            "machine": _read("/etc/machine-id"),
            "boot": _read("/proc/sys/kernel/random/boot_id")}


def this_worker() -> dict:
    stat = _proc_stat(os.getpid())
    return {**this_host(), "pid": os.getpid(), "started": stat[1] if stat else None}


def worker_dead(record: dict, here: dict) -> bool:
    """True when ``record``'s process is known to be gone. Workers on other machines are never
    judged here (the heartbeat does that)."""
    if record.get("host") != here["host"] or record.get("machine") != here["machine"]:
        return False
    if here["boot"] and record.get("boot") and record["boot"] != here["boot"]:
        return True  # this machine rebooted since
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is None:
        return False  # no /proc: trust the signal check
    state, started = stat
    return state in ("Z", "X") or (record.get("started") is not None
                                  and started != record["started"])


class DeadWorkerCheck:
    """Finds running trials whose worker died on this machine, at most once per
    ``every_s`` seconds (it reads every running trial)."""

    def __init__(self, every_s: float, grace_s: float) -> None:
        self.every_s, self.grace_s, self._last = every_s, grace_s, -float("inf")

    def __call__(self, read_running: Callable[[], list[FrozenTrial]]) -> list[int]:
        if time.monotonic() - self._last < self.every_s:
            return []
        self._last = time.monotonic()
        return dead_worker_trials(read_running(), self.grace_s)


def dead_worker_trials(trials: list[FrozenTrial], grace_s: float) -> list[int]:
    """Trial ids of running trials whose worker process on this machine is gone; and of
    running trials that never recorded a worker (killed right after being created) once they
    are older than ``grace_s``."""
    here, now = this_host(), time.time()
    stale = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        record = t.system_attrs.get(WORKER_ATTR)
        if record is None:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if now - started > grace_s:
                stale.append(t._trial_id)
        elif worker_dead(record, here):
            stale.append(t._trial_id)
    return stale


class WorkerRecords:
    """Writes this worker's record on a trial once, from Optuna's heartbeat thread."""

    def __init__(self) -> None:
        self._done: set[int] = set()
        self._me = this_worker()

    def record(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        if trial_id not in self._done:
            storage.set_trial_system_attr(trial_id, WORKER_ATTR, self._me)
            self._done.add(trial_id)
