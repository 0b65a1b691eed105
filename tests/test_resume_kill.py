"""A trial cut off by kill -9 is marked failed by the heartbeat and run again on resume."""

import os
import signal
import time

import optuna
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


def test_ctrl_c_stops_cleanly_and_keeps_the_study(tmp_path):
    args = search_args(tmp_path, "proxy=distill", "proxy.train_images=512",
                       "proxy.val_images=64", "proxy.epochs=12", "proxy.teacher.epochs=1",
                       "proxy.score=fidelity", "search.n_trials=4")
    storage = f"sqlite:///{tmp_path}/study.db"
    proc = start_cli(args, capture=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(0.5)
            assert proc.poll() is None, "the search finished before it could be interrupted"
            try:
                trials = optuna.load_study(study_name=NAME, storage=storage).trials
            except KeyError:
                continue
            if any(t.state == TrialState.COMPLETE for t in trials) and \
                    any(t.state == TrialState.RUNNING for t in trials):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "resume" in err and "Traceback" not in err
    states = [t.state for t in optuna.load_study(study_name=NAME, storage=storage).trials]
    assert TrialState.RUNNING not in states and TrialState.COMPLETE in states
