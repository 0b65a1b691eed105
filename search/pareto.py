"""Pareto dominance, fronts and hypervolume: one home for every front the tool computes (the
search's, the study's, the report's and the benchmarks').

One convention throughout: a point's objectives come in the study's order, accuracy first
(``(accuracy, latency_ms, ...)``), and ``signs`` say which way each is better (+1 maximized,
-1 minimized; :func:`signs_of` from Optuna's directions). The 2-D helpers
(:func:`front_2d`, :func:`hypervolume`) take ``(accuracy, latency)`` pairs.

Trials: :class:`FrontTracker` keeps a study's front up to date as trials finish;
:func:`trusted_front` is the front where architectures were scored at several fidelities
(``proxy.promote``): each counts with its most trusted score, the others are put on its scale
(:func:`trusted_values`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.objective import FIDELITY

__all__ = ["dominates", "feasible", "fidelity", "fidelity_rank", "FIDELITY_ORDER", "front_2d",
           "FrontTracker", "hypervolume", "nondominated", "signs_of", "trusted_front",
           "trusted_values"]

# The proxies from the cheapest to the most trusted (how well each ranks full training).
FIDELITY_ORDER = ("zero_cost", "supernet", "distill")


def signs_of(directions: Sequence[optuna.study.StudyDirection]) -> list[float]:
    """+1 for each maximized objective, -1 for each minimized one."""
    return [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in directions]


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a, b)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def nondominated(points: Sequence[Sequence[float]], signs: Sequence[float]) -> list[int]:
    """The indices of the points no other point dominates, in their order."""
    front: list[int] = []
    for i, p in enumerate(points):
        if any(dominates(points[f], p, signs) for f in front):
            continue
        front = [f for f in front if not dominates(p, points[f], signs)] + [i]
    return sorted(front)


def front_2d(points: Sequence[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The ``(accuracy, latency, label)`` points no other point beats on both, fastest
    first."""
    best, out = float("-inf"), []
    for acc, lat, label in sorted(points, key=lambda p: (p[1], -p[0])):
        if acc > best:
            out.append((acc, lat, label))
            best = acc
    return out


def hypervolume(points: Sequence[tuple[float, float]], ref_latency: float,
                ref_score: float = 0.0) -> float:
    """Area dominated by ``(accuracy, latency)`` points (accuracy up, latency down), from
    (``ref_score``, ``ref_latency``); ``ref_score`` below 0 for scores that can be negative
    (fidelity+naswot's standardized sum)."""
    area, best = 0.0, ref_score
    for lat, acc in sorted((lat, acc) for acc, lat in points if lat <= ref_latency):
        if acc > best:  # a new step: from this latency to the reference, up to acc
            area += (acc - best) * (ref_latency - lat)
            best = acc
    return area


# ---- trials ---------------------------------------------------------------------------------
def feasible(trial: FrozenTrial) -> bool:
    """Within every budget (Optuna's constraints) and scored (not skipped)."""
    constraints = trial.system_attrs.get("constraints")
    if constraints is None:
        constraints = [v for k, v in trial.system_attrs.items() if k.startswith("constraints:")]
    return all(v <= 0 for v in constraints) and "skipped" not in trial.user_attrs


def fidelity(trial: FrozenTrial) -> str:
    """The proxy whose score is the trial's value (trials from before promotions existed
    recorded only ``proxy``)."""
    return str(trial.user_attrs.get(FIDELITY, trial.user_attrs.get("proxy", "")))


def fidelity_rank(trial: FrozenTrial) -> int:
    """How far the trial's fidelity is trusted: higher is better; -1 unknown."""
    kind = fidelity(trial)
    return FIDELITY_ORDER.index(kind) if kind in FIDELITY_ORDER else -1


class FrontTracker:
    """The Pareto front kept up to date as trials finish: each new complete trial is compared
    with the front only (the progress display calls this after every trial; recomputing the
    front from all trials would cost O(n^2) per trial)."""

    def __init__(self, directions: list) -> None:
        self.signs = signs_of(directions)
        self.front: list[FrozenTrial] = []
        self.seen: set[int] = set()

    def update(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        for t in trials:
            if t.state != TrialState.COMPLETE or t.number in self.seen:
                continue
            self.seen.add(t.number)
            if not feasible(t) or any(dominates(f.values, t.values, self.signs)
                                      for f in self.front):
                continue
            self.front = [f for f in self.front
                          if not dominates(t.values, f.values, self.signs)] + [t]
        self.front.sort(key=lambda t: -self.signs[0] * t.values[0])
        return self.front


def trusted_values(trials: list[FrozenTrial]) -> dict[int, list[float]]:
    """The objective values of the trials that count when an architecture was scored at
    several fidelities (``proxy.promote``), by trial number: only each architecture's trials
    of its most trusted fidelity count, and the accuracy of a trial of a cheaper fidelity is
    put on the most trusted fidelity's scale by a straight line fitted to the architectures
    scored at both (least squares, slope at least 0: a cheap score that does not rank says
    nothing, and every such trial gets the promoted trials' mean). With fewer than two such
    architectures, values stay as they are. Expects the study's complete trials."""
    def arch(t: FrozenTrial) -> str:
        return t.user_attrs.get("arch_id", f"#{t.number}")

    best: dict[str, int] = {}
    for t in trials:
        best[arch(t)] = max(best.get(arch(t), -1), fidelity_rank(t))
    kept = [t for t in trials if fidelity_rank(t) == best[arch(t)]]
    out = {t.number: list(t.values) for t in kept}
    top = max((fidelity_rank(t) for t in kept), default=-1)
    by_rank: dict[int, dict[str, float]] = {}
    for t in trials:
        by_rank.setdefault(fidelity_rank(t), {})[arch(t)] = t.values[0]
    trusted = by_rank.get(top, {})
    for rank, scores in by_rank.items():
        pairs = [(scores[a], trusted[a]) for a in scores if a in trusted]
        if rank == top or len({x for x, _ in pairs}) < 2:
            continue
        x, y = np.array(pairs).T
        slope = max(0.0, float(np.polyfit(x, y, 1)[0]))
        icept = float(y.mean() - slope * x.mean())
        for t in kept:
            if fidelity_rank(t) == rank:
                out[t.number][0] = slope * t.values[0] + icept
    return out


def trusted_front(trials: list[FrozenTrial], directions: list) -> list[FrozenTrial]:
    """The Pareto front of complete, feasible trials by :func:`trusted_values`, the best
    first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if len({fidelity_rank(t) for t in done}) <= 1:
        return FrontTracker(directions).update(done)
    values = trusted_values(done)
    signs = signs_of(directions)
    members = [t for t in done if t.number in values and feasible(t)]
    front = [members[i] for i in nondominated([values[t.number] for t in members], signs)]
    return sorted(front, key=lambda t: -signs[0] * values[t.number][0])
