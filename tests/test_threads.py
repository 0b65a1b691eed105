"""A search on a shared machine: threads chosen from the free cores (and a requested count
obeyed, clamped to the cores), a slow trial said on screen."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from spaces.threads import CpuSample, ThreadChooser, busy_cores
from tests.conftest import run_cli, run_here, search_args


def sample(busy: float, own: float, wall: float) -> CpuSample:
    return CpuSample(busy_s=busy, total_s=100.0 + wall, own_s=own, wall_s=wall)


def test_other_programs_load_is_the_machines_less_this_process():
    # 10 s in which the machine was busy 15 core-seconds, 6 of them this process's own
    assert busy_cores(sample(0, 0, 0), sample(15, 6, 10)) == pytest.approx(0.9)
    assert busy_cores(sample(0, 0, 0), sample(1, 2, 10)) == 0.0  # never negative
    assert busy_cores(sample(0, 0, 5), sample(1, 0, 5)) == 0.0  # no time passed


def test_threads_follow_the_free_cores_and_a_request_is_obeyed(monkeypatch):
    samples = iter([sample(0, 0, 0), sample(0, 0, 1),  # the first look: an idle machine
                    sample(4, 0, 3),  # two seconds with 2 cores busy elsewhere
                    sample(5, 0, 5)])  # then half a core
    monkeypatch.setattr(CpuSample, "now", classmethod(lambda cls: next(samples)))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    chooser = ThreadChooser(None, available=4)
    assert chooser.others == 0.0
    assert chooser.choose() == 2 and chooser.others == pytest.approx(2.0)
    assert chooser.choose() == 4  # the load went away: 0.5 busy rounds to 4 free
    monkeypatch.undo()
    assert ThreadChooser(3, available=4).choose() == 3 and ThreadChooser(3, 4).note() is None
    clamped = ThreadChooser(8, available=2)
    assert clamped.choose() == 2
    assert clamped.note() == ("search.threads=8 is more than the 2 cores this process may "
                              "use: using 2")


def test_a_slow_trial_is_said_with_its_likely_cause():
    from search.watch import TrialWatch

    class Bar:
        lines: list = []

        def write(self, line):
            self.lines.append(line)

        def set_description(self, *a, **k):
            pass

    chooser = ThreadChooser(2, available=2)
    chooser.others = 1.5
    chooser.last = None
    watch = TrialWatch(Bar(), chooser)
    try:
        line = watch.slow_line(12, 400.0, 20.0)
    finally:
        watch.close()
    assert line.startswith("trial 12 has run 400 s, 20 times this run's median trial (20 s)")
    assert "other programs keep about 1.5 of the 2 cores busy" in line
    assert "search.threads=null" in line


def test_a_search_beside_a_busy_program_says_how_many_threads_it_takes(tmp_path):
    hog = subprocess.Popen([sys.executable, "-c",
                            "import time\nend = time.time() + 60\nwhile time.time() < end: pass"])
    try:
        time.sleep(1.0)
        result = run_cli(*search_args(tmp_path, "search.n_trials=2", "search.threads=null"))
    finally:
        hog.kill()
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert "other programs keep about" in text and "thread(s)" in text


def test_more_threads_than_cores_are_clamped_with_a_line(tmp_path):
    result = run_here(*search_args(tmp_path, "search.n_trials=1", "search.threads=512"))
    assert result.returncode == 0, result.stderr
    assert "search.threads=512 is more than the" in result.stdout + result.stderr
    zero = run_here(*search_args(tmp_path, "search.threads=0"))
    assert zero.returncode == 2 and "search.threads=0 must be at least 1" in zero.stderr
