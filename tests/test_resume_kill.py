"""A trial cut off by kill -9 is marked failed by the heartbeat and run again on resume."""

import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, search_args, start_cli

NAME = "rpi4-synthetic-mobilenet"


def test_kill_9_mid_trial_then_resume_reruns_it(tmp_path):
    args = search_args(tmp_path, "proxy=distill", "proxy.train_images=512",
                       "proxy.val_images=64", "proxy.epochs=12", "proxy.teacher.epochs=1",
                       "proxy.score=fidelity", "search.heartbeat_s=1", "search.n_trials=3",
                       "search.sampler=random")
    storage = f"sqlite:///{tmp_path}/study.db"
    proc = start_cli(args)
    try:
        deadline = time.time() + 240
        running = None
        while time.time() < deadline and running is None:
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name=NAME, storage=storage)
            except KeyError:
                continue
            states = {t.number: t.state for t in study.trials}
            if any(s == TrialState.COMPLETE for s in states.values()):
                # Kill mid-training: once the running trial has sampled its architecture.
                running = next((t.number for t in study.trials if t.state == TrialState.RUNNING
                                and "arch_json" in t.user_attrs), None)
        assert running is not None, "no trial was running after the first one completed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = optuna.load_study(study_name=NAME, storage=storage).trials[running]
    assert killed.state == TrialState.RUNNING  # as a power loss leaves it
    time.sleep(3)  # past the heartbeat's grace period (2 x search.heartbeat_s)

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=NAME, storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    assert study.trials[running].state == TrialState.FAIL
    retried = [t for t in done if t.system_attrs.get("failed_trial") == running]
    assert len(retried) == 1 and retried[0].params == killed.params


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_end_alike_and_the_trial_runs_again(tmp_path, sig):
    """Ctrl-C and SIGTERM end the search the same way: one line that names the interrupted
    trial and the command that resumes; the trial is queued again and runs on resume."""
    args = search_args(tmp_path, "proxy=distill", "proxy.train_images=512",
                       "proxy.val_images=64", "proxy.epochs=12", "proxy.teacher.epochs=1",
                       "proxy.score=fidelity", "search.n_trials=3")
    storage = f"sqlite:///{tmp_path}/study.db"
    proc = start_cli(args, capture=True)
    try:
        deadline, running = time.time() + 240, None
        while time.time() < deadline and running is None:
            time.sleep(0.5)
            assert proc.poll() is None, "the search finished before it could be interrupted"
            try:
                trials = optuna.load_study(study_name=NAME, storage=storage).trials
            except KeyError:
                continue
            if any(t.state == TrialState.COMPLETE for t in trials):
                running = next((t.number for t in trials if t.state == TrialState.RUNNING
                                and "arch_json" in t.user_attrs), None)
        assert running is not None
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"trial {running} was running and runs again first" in lines[0]
    assert "Resume with: " in lines[0] and "-m search" in lines[0]
    study = optuna.load_study(study_name=NAME, storage=storage)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING in states
    assert study.trials[running].state == TrialState.FAIL

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=NAME, storage=storage)
    again = [t for t in study.trials if t.system_attrs.get("failed_trial") == running]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].params == study.trials[running].params
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3
