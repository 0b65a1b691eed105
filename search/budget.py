"""One trial budget shared by every worker of a study.

``search.n_trials`` is the study's number of complete trials, however many workers run. Each
trial that is complete, running or waiting (a re-run of a trial whose worker died) holds one of
``n_trials`` slots. A worker asks Optuna for a trial only while a slot is free, and checks
again once it has the trial: Optuna numbers trials in the order they are created, so a trial
with ``n_trials`` slot holders before it is surplus (another worker took the last slot at the
same moment). A surplus trial is closed at once as failed, marked ``edgenas:surplus``, and
never evaluated; so the study ends with exactly ``n_trials`` complete trials, none run twice.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["check_slot", "counts", "fail_stale", "HOLDS_SLOT", "holds_slot", "is_surplus",
           "SURPLUS_ATTR", "SurplusTrial", "wait_for_slot"]

SURPLUS_ATTR = "edgenas:surplus"
HOLDS_SLOT = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)


class SurplusTrial(RuntimeError):
    """The budget was taken by other workers' trials while this one was being created."""


def holds_slot(t: FrozenTrial) -> bool:
    return t.state in HOLDS_SLOT and SURPLUS_ATTR not in t.system_attrs


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` comes after ``n_trials`` slot holders (trials are numbered in
    the order they are created)."""
    if number < n_trials:  # fewer trials than slots exist before it: no read needed
        return False
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if t.number < number and holds_slot(t)) >= n_trials


def check_slot(trial: optuna.Trial, n_trials: int) -> None:
    """Raise :class:`SurplusTrial` (after marking it) if ``trial`` is beyond the budget."""
    if is_surplus(trial.study, trial.number, n_trials):
        trial.study._storage.set_trial_system_attr(trial._trial_id, SURPLUS_ATTR, True)
        raise SurplusTrial(f"trial {trial.number} is beyond search.n_trials={n_trials}: other "
                           "workers hold every slot; not evaluated")


def counts(trials: list[FrozenTrial]) -> tuple[int, int, int]:
    """(complete, slot holders, waiting) among ``trials``."""
    complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
    held = sum(1 for t in trials if holds_slot(t))
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return complete, held, waiting


def fail_stale(study: optuna.Study) -> None:
    """Fail (and queue re-runs of) trials whose worker died; a no-op without a heartbeat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def wait_for_slot(study: optuna.Study, n_trials: int, poll_s: float = 1.0,
                  on_wait: Callable[[int, int], None] | None = None,
                  trials: list[FrozenTrial] | None = None) -> bool:
    """Block until this worker may ask for a trial (True) or the study is done (False).

    While other workers' trials hold every slot, wait for them: one that finishes ends the
    study or frees nothing; one whose worker dies is failed here (the heartbeat, or host and
    pid) and queued again, and this worker takes it over. ``trials``: the study's trials,
    just read by the caller (saves one read).
    """
    first = True
    while True:
        if not first:  # (before the first check, Optuna's loop has just done this)
            fail_stale(study)
        complete, held, waiting = counts(trials if first and trials is not None
                                         else study.get_trials(deepcopy=False))
        first = False
        if complete >= n_trials:
            return False
        if held < n_trials or waiting:
            return True
        if on_wait is not None:
            on_wait(complete, held)
        time.sleep(poll_s)
