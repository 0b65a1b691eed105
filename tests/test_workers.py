"""Many workers on one study: PostgreSQL and journal storages, the shared trial budget, and the
faults they survive (kill -9 of a worker, a PostgreSQL restart)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.budget import SURPLUS_ATTR, check_slot, is_surplus, wait_for_slot
from search.storage import open_storage
from search.workers import WORKER_ATTR, this_worker, worker_dead
from tests.conftest import ROOT, cli_env, search_args, start_cli

pytestmark = pytest.mark.slow

SLOW_PROXY = ("proxy=distill", "proxy.train_images=512", "proxy.val_images=64",
              "proxy.epochs=4", "proxy.teacher.epochs=1",
              "proxy.score=fidelity")  # trials of ~3 s, no calibration before them


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_s=30))


def wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        finally:
            if p.poll() is None:
                p.kill()
    return outs


def check_exact(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """``n`` complete trials, none run twice, nothing left running or waiting, and no surplus
    trial evaluated. (The workers sample at random: in a space this size, two equal
    architectures among ``n`` would mean one proposal was evaluated twice.)"""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == n
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    arch_ids = [t.user_attrs["arch_id"] for t in done]
    assert len(set(arch_ids)) == n, "an architecture was evaluated twice"
    numbers = {t.number for t in done}
    reruns = [t.system_attrs["failed_trial"] for t in done if "failed_trial" in t.system_attrs]
    assert not numbers & set(reruns), "a trial completed and was re-run too"
    assert len(reruns) == len(set(reruns)), "a trial was re-run twice"
    for t in study.trials:
        if SURPLUS_ATTR in t.system_attrs:
            assert "arch_id" not in t.user_attrs, "a surplus trial was evaluated"
    return done


def two_workers(tmp_path: Path, storage: str, name: str, *extra: str,
                envs: tuple[dict | None, dict | None] = (None, None),
                sampler: str = "random") -> list[subprocess.Popen]:
    return [start_cli(search_args(tmp_path, f"study.name={name}", f"search.sampler={sampler}",
                                  *extra, storage=storage, out=f"out{i}"),
                      capture=True, env=envs[i]) for i in range(2)]


def wait_for_running(url: str, name: str, host: str | None = None, timeout: float = 240
                     ) -> optuna.trial.FrozenTrial:
    """A running trial that has sampled its architecture (of a worker on ``host``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            trials = load(url, name).trials
        except KeyError:
            continue
        if not any(t.state == TrialState.COMPLETE for t in trials):
            continue
        for t in trials:
            worker = t.system_attrs.get(WORKER_ATTR, {})
            if t.state == TrialState.RUNNING and "arch_json" in t.user_attrs and \
                    (host is None or worker.get("host") == host):
                return t
    raise AssertionError("no running trial to kill")


def kill_one_and_check(tmp_path: Path, storage: str, name: str, envs: tuple) -> None:
    """Kill worker 0 mid-trial; worker 1 re-runs that trial and finishes the study."""
    n = 5
    args = [*SLOW_PROXY, f"search.n_trials={n}", "search.sampler=random",
            "search.heartbeat_s=1"]
    procs = [start_cli(search_args(tmp_path, f"study.name={name}", *args, storage=storage,
                                   out="out0"), capture=True, env=envs[0])]
    try:
        wait_for_running(storage, name)  # worker 0 has trained (and cached) the teacher
        procs.append(start_cli(search_args(tmp_path, f"study.name={name}", *args,
                                           storage=storage, out="out1"),
                               capture=True, env=envs[1]))
        host = (envs[0] or {}).get("EDGENAS_WORKER_HOST")
        victim = procs[0].pid
        deadline = time.time() + 240
        while True:  # a trial of worker 0, caught mid-training
            killed = wait_for_running(storage, name, host)
            if killed.system_attrs[WORKER_ATTR]["pid"] == victim:
                break
            assert time.time() < deadline, "worker 0 never ran a trial"
        os.kill(victim, signal.SIGKILL)
        procs[0].wait()
        # The trial it was running when killed: the one seen above, or, where that one
        # finished in the moment before the kill, the next it had started.
        stuck = [t for t in load(storage, name).trials
                 if t.system_attrs.get(WORKER_ATTR, {}).get("pid") == victim
                 and t.state != TrialState.COMPLETE]
        assert len(stuck) == 1, [(t.number, t.state) for t in stuck]
        killed = stuck[0]
        _, err = wait_all(procs[1:])[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 0, err[-3000:]
    study = load(storage, name)
    done = check_exact(study, n)
    assert study.trials[killed.number].state == TrialState.FAIL
    retried = [t for t in done if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].system_attrs[WORKER_ATTR]["pid"] == procs[1].pid


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.postgres
def test_two_workers_share_one_postgres_study_exactly(postgres, tmp_path):
    pg, data, url = postgres
    secret = url.replace("postgres@", "postgres:s3cret-pw@")  # the test server trusts any
    n = 40
    procs = two_workers(tmp_path, secret, "pg-two", "storage=postgresql",
                        f"search.n_trials={n}")
    outs = wait_all(procs)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "s3cret-pw" not in out + err
    for i in range(2):
        for f in (tmp_path / f"out{i}").iterdir():
            assert "s3cret-pw" not in f.read_text(), f
    study = load(url, "pg-two")
    done = check_exact(study, n)
    pids = {t.system_attrs[WORKER_ATTR]["pid"] for t in done}
    assert pids == {p.pid for p in procs}, "both workers should have run trials"


def _open(url: str) -> str:
    try:
        open_storage(url, heartbeat_s=30)
        return "ok"
    except Exception as exc:  # reported to the test
        return repr(exc)


@pytest.mark.postgres
def test_workers_starting_together_on_an_empty_database_all_open_it(postgres):
    # Each creates Optuna's tables; the losers of that race must retry, not fail.
    import multiprocessing

    pg, data, _ = postgres
    url = pg.create_database(data, "empty_race")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open, [url] * 4) == ["ok"] * 4


@pytest.mark.postgres
def test_postgres_kill_9_of_a_worker_on_another_machine_is_rerun_by_heartbeat(postgres,
                                                                             tmp_path):
    # Two "machines" (distinct host names): worker 1 cannot see worker 0's pid, so only the
    # heartbeat (2 x search.heartbeat_s of silence) can fail the killed trial.
    pg, data, url = postgres
    kill_one_and_check(tmp_path, url, "pg-kill", envs=({"EDGENAS_WORKER_HOST": "machine-a"},
                                                       {"EDGENAS_WORKER_HOST": "machine-b"}))


@pytest.mark.postgres
def test_postgres_restart_while_workers_run_loses_nothing(postgres, tmp_path):
    pg, data, url = postgres
    n = 120
    procs = two_workers(tmp_path, url, "pg-restart", f"search.n_trials={n}")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            try:
                complete = sum(t.state == TrialState.COMPLETE
                               for t in load(url, "pg-restart").trials)
            except KeyError:
                continue
            if complete >= 10:
                break
        assert complete < n, "finished before the restart"
        pg.stop(data)  # fast shutdown: open connections and transactions are cut
        time.sleep(3)
        pg.start(data)
        outs = wait_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert any("unreachable" in err and "reachable again" in err for _, err in outs)
    study = load(url, "pg-restart")
    check_exact(study, n)
    failed = [t for t in study.trials
              if t.state == TrialState.FAIL and SURPLUS_ATTR not in t.system_attrs]
    assert not failed, [t.system_attrs.get("fail_reason") for t in failed]


@pytest.mark.postgres
def test_postgres_down_for_longer_than_retry_s_stops_with_a_clear_message(postgres, tmp_path):
    pg, data, url = postgres
    args = search_args(tmp_path, "study.name=pg-gone", "storage.retry_s=2",
                       "search.n_trials=100000", storage=url)
    proc = start_cli(args, capture=True)
    try:
        wait_for_running(url, "pg-gone", timeout=120)
        pg.stop(data)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not (data / "postmaster.pid").exists():
            pg.start(data)
    assert proc.returncode == 2, err[-3000:]
    assert "lost the study storage" in err and "retry_s" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Journal file


def test_two_workers_share_one_journal_study_exactly(tmp_path):
    storage = f"journal:{tmp_path}/study.journal"
    n = 30
    procs = two_workers(tmp_path, storage, "journal-two", "storage=journal",
                        f"search.n_trials={n}")
    for p, (out, err) in zip(procs, wait_all(procs)):
        assert p.returncode == 0, err[-3000:]
    done = check_exact(load(storage, "journal-two"), n)
    assert len({t.system_attrs[WORKER_ATTR]["pid"] for t in done}) == 2


def test_two_tpe_workers_share_one_study_exactly(tmp_path):
    # the default sampler, with its constant liar, past its 10 random start-up trials
    storage = f"journal:{tmp_path}/study.journal"
    n = 16
    procs = two_workers(tmp_path, storage, "journal-tpe", "storage=journal",
                        f"search.n_trials={n}", sampler="tpe")
    for p, (out, err) in zip(procs, wait_all(procs)):
        assert p.returncode == 0, err[-3000:]
        assert "ExperimentalWarning" not in err
    done = check_exact(load(storage, "journal-tpe"), n)
    assert len({t.system_attrs[WORKER_ATTR]["pid"] for t in done}) == 2


def test_journal_kill_9_of_a_worker_is_found_by_host_and_pid_and_rerun(tmp_path):
    kill_one_and_check(tmp_path, f"journal:{tmp_path}/study.journal", "journal-kill",
                       envs=(None, None))


# ---------------------------------------------------------------------------------------------
# The budget and the worker records, in one process


def _study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def test_a_trial_beyond_the_budget_is_surplus_and_never_evaluated():
    study = _study()
    for _ in range(3):
        study.tell(study.ask(), [0.5, 1.0])
    running = study.ask()  # another worker's, still running: it holds the 4th slot
    late = study.ask()
    assert not is_surplus(study, running.number, 4)
    assert is_surplus(study, late.number, 4)
    with pytest.raises(RuntimeError, match="beyond search.n_trials=4"):
        check_slot(late, 4)
    study.tell(late, state=TrialState.FAIL)
    assert study.trials[late.number].system_attrs[SURPLUS_ATTR] is True
    # The running trial's worker dies: its slot is free again for a new trial.
    study.tell(running, state=TrialState.FAIL)
    assert not is_surplus(study, study.ask().number, 4)


def test_wait_for_slot_waits_while_others_hold_the_budget_and_ends_when_complete():
    study = _study()
    study.tell(study.ask(), [0.5, 1.0])
    other = study.ask()
    waits = []

    def on_wait(complete: int, held: int) -> None:
        waits.append((complete, held))
        study.tell(other, [0.4, 0.5])  # the other worker finishes meanwhile

    assert wait_for_slot(study, 2, poll_s=0.01, on_wait=on_wait) is False
    assert waits == [(1, 2)]
    assert wait_for_slot(study, 3, poll_s=0.01) is True


def test_worker_records_judge_only_processes_on_this_machine():
    me = this_worker()
    here = {k: me[k] for k in ("host", "machine", "boot")}
    assert not worker_dead(me, here)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert worker_dead({**me, "pid": gone.pid}, here)
    assert not worker_dead({**me, "pid": gone.pid, "host": "elsewhere"}, here)
    assert worker_dead({**me, "boot": "an-earlier-boot"}, here)  # this machine rebooted
    assert worker_dead({**me, "started": me["started"] + 1}, here)  # pid reused since


# ---------------------------------------------------------------------------------------------
# optuna-dashboard


def test_optuna_dashboard_serves_the_study_on_loopback_only(tmp_path):
    import json
    import socket
    import urllib.request

    from tests.conftest import run_cli

    result = run_cli(*search_args(tmp_path))
    assert result.returncode == 0, result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(dashboard), f"sqlite:///{tmp_path}/study.db", "--port",
                             str(port)], cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert body is not None, "the dashboard did not answer"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["rpi4-synthetic-mobilenet"]
        listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
        local = [line.split()[1] for line in listening if line.split()[3] == "0A"]
        mine = [a for a in local if int(a.split(":")[1], 16) == port]
        assert mine == ["0100007F:" + f"{port:04X}"], mine  # 127.0.0.1 only
    finally:
        proc.terminate()
        proc.wait(timeout=10)
