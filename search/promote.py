"""Multi-fidelity during the search (``proxy.promote.to=distill``).

A cheap proxy (the supernet, or NASWOT) scores every trial. While the search runs, the
members of the cheap trials' Pareto front are *promoted*: each is queued again as a new trial
of the same parameters (Optuna's ``enqueue_trial``; a finished trial's values cannot change),
which the objective scores with the distilled proxy. The promoted trial records the cheap
trial it promotes (``promote_of``) and the settings of the proxy that scored it
(``promote_hash``); every trial records its ``fidelity`` (the proxy whose score is its value).

From then on the architecture's higher-fidelity trial takes the place of its cheap twin in
the Pareto front, the table, ``pareto.csv`` and ``select=best`` (which exports the best member
of the most trusted fidelity); the cheap scores of the architectures not promoted are put on
the promoted proxy's scale by a line fitted to the promoted pairs
(:func:`search.pareto.trusted_values`). Promotions take at most ``proxy.promote.share`` of the
trials' time, one at a time: the cheap front's best member first, then across the front (the
member farthest in cost from the promoted ones). A promotion lives in the storage from the
moment it is queued: a search killed during one runs it on resume (its stale trial is queued
again, attributes and all), and an architecture is never promoted twice under the same
settings.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import Config
from search.objective import PROMOTE_HASH, PROMOTE_OF
from search.pareto import FrontTracker

__all__ = ["next_promotion", "PROMOTE_HASH", "PROMOTE_OF", "promote", "promoted_config",
           "trial_seconds"]


def promoted_config(cfg: Config, kind: str) -> Config:
    """The configuration of the higher-fidelity proxy ``kind`` that scores a cheap search's
    candidates again (promotions, ``proxy.rescore``): the same score and training settings,
    without early stopping or the pre-filter (one candidate at a time, nothing to compare
    with), and without scoring again itself."""
    out = copy.deepcopy(cfg)
    out.proxy.kind, out.proxy.rescore, out.proxy.promote.to = kind, None, None
    out.proxy.early_stop.at, out.proxy.prefilter.dominated_by = None, None
    return out


def trial_seconds(trial: FrozenTrial) -> float:
    """Wall time of a finished trial (0 for one that has not finished)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def next_promotion(trials: list[FrozenTrial], directions: list, key: str, share: float,
                   after: int) -> Optional[FrozenTrial]:
    """The cheap trial to promote now, or None: none while a promotion is queued or running,
    before ``after`` complete cheap trials, or while promotions have taken more than
    ``share`` of the trials' time; then, among the cheap front's members whose architecture
    has no promotion under ``key`` (the promoted proxy's settings) yet, the best first, then
    the one farthest along the front (in its first cost objective) from every promoted one,
    so that promotions cover the front from the most accurate to the fastest."""
    promoted = [t for t in trials if PROMOTE_OF in t.user_attrs
                and t.user_attrs.get(PROMOTE_HASH) == key]
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in promoted):
        return None
    cheap = [t for t in trials if t.state == TrialState.COMPLETE
             and PROMOTE_OF not in t.user_attrs]
    if len(cheap) < after:
        return None
    spent = sum(trial_seconds(t) for t in promoted)
    if spent > share * (spent + sum(trial_seconds(t) for t in cheap)):
        return None
    # an architecture promoted (or being promoted), or whose promotion failed twice (its
    # training diverges): not again; one failure may be an interrupted run (Ctrl-C)
    failed = Counter(t.user_attrs.get("arch_id") for t in promoted
                     if t.state == TrialState.FAIL)
    done = {t.user_attrs.get("arch_id") for t in promoted if t.state != TrialState.FAIL}
    done |= {arch for arch, n in failed.items() if n >= 2}
    front = FrontTracker(directions).update(cheap)
    todo = [t for t in front if t.user_attrs.get("arch_id") not in done]
    placed = [_cost(t) for t in promoted if t.values]
    if not todo or not placed:
        return todo[0] if todo else None  # the front comes best first
    # then across the front: the member farthest (in log cost) from every promoted one
    return max(todo, key=lambda t: (min(abs(_cost(t) - p) for p in placed), t.values[0]))


def _cost(trial: FrozenTrial) -> float:
    """Where a trial sits along the front: the log of its first cost objective."""
    return math.log(max(trial.values[1], 1e-12)) if len(trial.values) > 1 else 0.0


def promote(study: optuna.Study, trial: FrozenTrial, key: str) -> None:
    """Queue ``trial``'s parameters again as a promoted trial (scored by the promoted proxy
    whose settings hash to ``key``)."""
    study.enqueue_trial(trial.params, user_attrs={
        PROMOTE_OF: trial.number, PROMOTE_HASH: key, "arch_id": trial.user_attrs["arch_id"]})
