"""Around the trials of one search run: the torch threads chosen again before every trial, the
trial bar while a trial runs (its time; a trial far slower than this run's median said on
screen with its likely cause), and Ctrl-C and SIGTERM ending the run alike with the
interrupted trial queued again."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Optional

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from search.cli import suggested_command
from search.errors import Interrupted
from spaces.threads import CpuSample, ThreadChooser, busy_cores

__all__ = ["interrupted_trial", "on_terminate_interrupt", "TrialWatch"]


class TrialWatch:
    """What the trial bar shows while a trial runs, from a thread of its own: the running
    trial and its time (the bar moves inside a long trial), and once a trial runs far longer
    than the study's median here (``SLOW`` times, and at least ``SLOW_S`` seconds), a line
    that says so, with the likely cause when other programs keep the cores busy. Before each
    trial, the torch threads are chosen again (:class:`spaces.threads.ThreadChooser`)."""

    SLOW, SLOW_S, TICK_S = 4.0, 30.0, 2.0

    def __init__(self, bar: tqdm, threads: ThreadChooser) -> None:
        self.bar, self.threads = bar, threads
        self.current: Optional[int] = None
        self.began = 0.0
        self.seconds: list[float] = []  # this run's finished trials
        self.warned: set[int] = set()
        self.said_threads: Optional[int] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def start(self, number: int) -> None:
        n = self.threads.choose()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        if self.threads.requested is None and n != self.said_threads and (
                self.said_threads is not None or n < self.threads.available):
            self.bar.write(f"other programs keep about {self.threads.others:.1f} of the "
                           f"{self.threads.available} cores busy: trials run with {n} "
                           "thread(s) (search.threads=N sets it)")
        self.said_threads = n
        self.current, self.began = number, time.monotonic()

    def stop(self) -> None:
        if self.current is not None:
            self.seconds.append(time.monotonic() - self.began)
        self.current = None
        self.bar.set_description("trials", refresh=False)

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.TICK_S):
            number = self.current
            if number is None:
                continue
            elapsed = time.monotonic() - self.began
            self.bar.set_description(f"trials (#{number}: {elapsed:.0f} s)")
            if self.seconds and number not in self.warned:
                median = sorted(self.seconds)[len(self.seconds) // 2]
                if elapsed > max(self.SLOW_S, self.SLOW * median):
                    self.warned.add(number)
                    self.bar.write(self.slow_line(number, elapsed, median))

    def slow_line(self, number: int, elapsed: float, median: float) -> str:
        now = CpuSample.now()
        others = (busy_cores(self.threads.last, now) if now is not None
                  and self.threads.last is not None else self.threads.others)
        cause = (f"; other programs keep about {others:.1f} of the {self.threads.available} "
                 f"cores busy, and this search runs {torch.get_num_threads()} thread(s): "
                 "stop them, or let the search choose its threads (search.threads=null)"
                 if others >= 0.5 else "")
        return (f"trial {number} has run {elapsed:.0f} s, {elapsed / max(median, 1e-9):.0f} "
                f"times this run's median trial ({median:.0f} s){cause}")


def on_terminate_interrupt():
    """While the trials run, SIGTERM ends the search as Ctrl-C does (the running trial is
    failed and queued again, one line says so), not silently with the trial left running."""
    @contextlib.contextmanager
    def installed():
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def terminate(signum, frame):
            raise KeyboardInterrupt("SIGTERM")

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    return installed()


def interrupted_trial(study: optuna.Study, number: Optional[int]) -> KeyboardInterrupt:
    """After Ctrl-C or SIGTERM: the trial that was running (failed by Optuna as it stopped)
    queued again with its parameters and attributes, as a killed worker's trial is, so the
    next run runs it first; the line that says so, as the interrupt to raise."""
    what = "no trial was running"
    if number is not None:
        trial = study.get_trials(deepcopy=False)[number]
        if trial.state in (TrialState.FAIL, TrialState.RUNNING):
            if trial.state == TrialState.RUNNING:  # not failed yet (Optuna was elsewhere)
                study.tell(number, state=TrialState.FAIL)
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=trial.params,
                distributions=trial.distributions, user_attrs=trial.user_attrs,
                system_attrs={**{k: v for k, v in trial.system_attrs.items()
                                 if k != "fail_reason"}, "failed_trial": number}))
            what = f"trial {number} was running and runs again first"
    return Interrupted(f"interrupted: {what}; the study keeps every finished trial. Resume "
                       f"with: {suggested_command('search')}")
