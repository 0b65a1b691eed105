"""Multi-fidelity during the search (proxy.promote): the cheap front is promoted to the
distilled proxy while the search runs, the front and select=best trust the promoted scores,
and a search killed during a promotion runs it again on resume."""

from __future__ import annotations

import csv
import datetime
import os
import signal
import time
from collections import Counter

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.pareto import trusted_front, trusted_values
from search.promote import next_promotion
from search.study import pareto_trials
from tests.conftest import run_cli, run_here, search_args, start_cli

NAME = "rpi4-synthetic-mobilenet"
PROMOTE = ("proxy=zero_cost", "proxy.promote.to=distill", "proxy.promote.after=3",
           "proxy.train_images=64", "proxy.val_images=32", "proxy.epochs=1",
           "proxy.teacher.epochs=1", "proxy.calibration_archs=2")
MAX = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
T0 = datetime.datetime(2026, 1, 1)


def fake(number: int, arch: str, fid: str, score: float, latency: float, seconds: float = 1,
         state: TrialState = TrialState.COMPLETE, **attrs) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, values=[score, latency] if state == TrialState.COMPLETE
                     else None, params={"x": float(number)},
                     distributions={"x": FloatDistribution(0, 1000)},
                     user_attrs={"arch_id": arch, "fidelity": fid, **attrs})
    t.number = number
    t.datetime_start, t.datetime_complete = T0, T0 + datetime.timedelta(seconds=seconds)
    return t


def test_a_promoted_score_replaces_its_cheap_twin_and_the_others_join_its_scale():
    # cheap scores rank a > b > c > d; the distilled proxy scored a and c: a line through
    # (10, 0.9) and (8, 0.7) puts b (9) at 0.8 and d (1) at 0.0
    trials = [fake(0, "a", "supernet", 10, 3.0), fake(1, "b", "supernet", 9, 2.0),
              fake(2, "c", "supernet", 8, 1.0), fake(3, "d", "supernet", 1, 0.5),
              fake(4, "a", "distill", 0.9, 3.0, promote_of=0),
              fake(5, "c", "distill", 0.7, 1.0, promote_of=2)]
    values = trusted_values(trials)
    assert set(values) == {1, 3, 4, 5}  # the cheap twins of a and c no longer count
    assert values[1][0] == pytest.approx(0.8) and values[3][0] == pytest.approx(0.0)
    front = trusted_front(trials, MAX)
    assert [t.number for t in front] == [4, 1, 5, 3]
    # a cheap score that ranks against the distilled proxy says nothing: the mean
    trials[4] = fake(4, "a", "distill", 0.5, 3.0, promote_of=0)
    values = trusted_values(trials)
    assert values[1][0] == pytest.approx(0.6) and values[3][0] == pytest.approx(0.6)


def test_promotions_cover_the_front_within_their_share_of_the_time():
    cheap = [fake(i, f"a{i}", "supernet", 10 - i, 8 - i) for i in range(6)]  # all on the front
    key = "k"
    first = next_promotion(cheap, MAX, key, share=0.5, after=3)
    assert first.number == 0  # the best first
    assert next_promotion(cheap[:2], MAX, key, share=0.5, after=3) is None  # too early
    one = fake(6, "a0", "distill", 0.8, 8, seconds=2, promote_of=0, promote_hash=key)
    second = next_promotion(cheap + [one], MAX, key, share=0.5, after=3)
    assert second.number == 5  # the farthest along the front from a0 (the fastest)
    busy = fake(6, "a0", "distill", 0.8, 8, seconds=10, promote_of=0, promote_hash=key)
    assert next_promotion(cheap + [busy], MAX, key, share=0.5, after=3) is None  # 10 s > 6 s
    queued = fake(6, "a0", "distill", 0, 8, state=TrialState.WAITING, promote_of=0,
                  promote_hash=key)
    assert next_promotion(cheap + [queued], MAX, key, share=0.5, after=3) is None
    # a promotion under other settings does not count; one that failed once is tried again,
    # twice not
    other = fake(6, "a0", "distill", 0.8, 8, promote_of=0, promote_hash="other")
    assert next_promotion(cheap + [other], MAX, key, 0.5, 3).number == 0
    failed = [fake(6 + i, "a0", "distill", 0, 8, state=TrialState.FAIL, promote_of=0,
                   promote_hash=key) for i in range(2)]
    assert next_promotion(cheap + failed[:1], MAX, key, 0.5, 3).number == 0
    assert next_promotion(cheap + failed, MAX, key, 0.5, 3).number != 0


def test_a_cheap_search_promotes_its_front_while_it_runs(tmp_path):
    result = run_here(*search_args(tmp_path, *PROMOTE, "search.n_trials=16"))
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{tmp_path}/study.db")
    done = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}
    promoted = [t for t in done.values() if "promote_of" in t.user_attrs]
    assert promoted and len(done) == 16
    for t in promoted:
        twin = done[t.user_attrs["promote_of"]]
        assert t.params == twin.params and t.user_attrs["arch_id"] == twin.user_attrs["arch_id"]
        assert t.user_attrs["fidelity"] == t.user_attrs["proxy"] == "distill"
        assert twin.user_attrs["fidelity"] == "zero_cost" and t.number > twin.number
    assert max(Counter(t.user_attrs["arch_id"] for t in promoted).values()) == 1
    front = pareto_trials(study)
    assert front[0].user_attrs["fidelity"] == "distill"  # select=best trusts it
    promoted_archs = {t.user_attrs["arch_id"] for t in promoted}
    assert not [t for t in front if t.user_attrs["fidelity"] == "zero_cost"
                and t.user_attrs["arch_id"] in promoted_archs]
    with open(tmp_path / "out" / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [str(t.number) for t in front]
    assert {r["fidelity"] for r in rows} <= {"distill", "zero_cost"}
    assert "fidelity" in result.stdout and "select=best exports" in result.stdout


def test_a_search_killed_during_a_promotion_runs_it_again_on_resume(tmp_path):
    args = search_args(tmp_path, *PROMOTE, "proxy.train_images=512", "proxy.epochs=12",
                       "proxy.calibration_archs=2", "search.heartbeat_s=1",
                       "search.n_trials=8")
    storage = f"sqlite:///{tmp_path}/study.db"
    warm = run_here(*search_args(tmp_path / "warm", *PROMOTE, "search.n_trials=1",
                                 f"cache_dir={tmp_path}/cache"))
    assert warm.returncode == 0, warm.stderr  # the teacher and calibration, cached
    proc = start_cli(args)
    try:
        deadline, running = time.time() + 240, None
        while time.time() < deadline and running is None:
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name=NAME, storage=storage).trials
            except KeyError:
                continue
            running = next((t.number for t in trials if t.state == TrialState.RUNNING
                            and "promote_of" in t.user_attrs and "arch_json" in t.user_attrs),
                           None)
        assert running is not None, "no promotion was running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(3)  # past the heartbeat's grace period
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=NAME, storage=storage)
    killed = study.trials[running]
    assert killed.state == TrialState.FAIL
    again = [t for t in study.trials if t.system_attrs.get("failed_trial") == running]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].user_attrs["promote_of"] == killed.user_attrs["promote_of"]
    assert again[0].user_attrs["fidelity"] == "distill"
    scored = Counter(t.user_attrs["arch_id"] for t in study.trials
                     if t.state == TrialState.COMPLETE and "promote_of" in t.user_attrs)
    assert max(scored.values()) == 1  # no architecture scored twice by the promoted proxy


def test_promote_with_the_proxy_that_searched_is_refused(tmp_path):
    out = run_here(*search_args(tmp_path, "proxy=distill", "proxy.promote.to=distill"))
    assert out.returncode == 2 and "every trial is scored by it already" in out.stderr
    out = run_here(*search_args(tmp_path, "proxy.promote.to=distill",
                                "proxy.promote.share=1.5"))
    assert out.returncode == 2 and "proxy.promote.share=1.5 must be between 0 and 1" in out.stderr
