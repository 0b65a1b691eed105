"""The trial objective: sample an architecture, price it on the device, score it.

Cheap numbers first (latency, energy, size from the device model; zero-cost scores; no
training), then the budgets as Optuna constraints (``value - budget <= 0`` is feasible). A
candidate over budget, or one the zero-cost pre-filter finds hopeless, is not trained: it gets
proxy accuracy 0 and is recorded as skipped. A candidate whose partial result is already
dominated stops training early (``proxy.early_stop``) and is recorded as stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from latency_models.memory import peak_memory_kib
from latency_models.model import DeviceModel
from latency_models.train_memory import train_memory_kib
from search.config import BUDGETS, Config
from search.proxies import Proxy, TrialInfo, make_proxy
from search.proxy import zero_cost_scores
from search.storage import batched_writes
from spaces.arch import Arch
from spaces.schemes import FinetuneConfig
from spaces.space import sample_arch

__all__ = ["constraint_values", "costs", "DIRECTIONS", "early_stopper", "fastest_possible",
           "FIDELITY", "Objective", "prefilter_reason", "PROMOTE_HASH", "PROMOTE_OF"]

DIRECTIONS = {"accuracy": "maximize", **{name: "minimize" for name in BUDGETS}}
FIDELITY = "fidelity"  # every trial's user attribute: the proxy whose score is its value
# A promoted trial's (search.promote): the number of its cheap twin, and the hash of the
# settings of the proxy that scores it
PROMOTE_OF = "promote_of"
PROMOTE_HASH = "promote_hash"


def costs(arch: Arch, device_model: DeviceModel, finetune: FinetuneConfig | None = None
          ) -> dict:
    """Predicted latency and energy, size, memory (one inference's activations; one
    fine-tuning step with ``finetune.update`` at ``finetune.batch``), parameters and MACs
    of the deployed network."""
    finetune = finetune or FinetuneConfig()
    pred = device_model.price(arch)  # the one pricing path (also that of its ONNX files)
    return {"latency_ms": pred.latency_ms, "energy_mj": pred.energy_mj,
            "size_kib": arch.size_kib(),
            "peak_memory_kib": peak_memory_kib(arch, tuple(device_model.native_bits)),
            "train_memory_kib": train_memory_kib(arch, finetune.update, finetune.batch),
            "params": arch.params(), "macs": arch.macs(), "provenance": pred.provenance}


def constraint_values(cfg: Config, c: dict) -> dict[str, float]:
    out = {}
    for name in BUDGETS:
        budget = getattr(cfg.budget, name)
        if budget is not None:
            out[name] = c[name] - budget
    return out


def _cheaper_or_equal(t: FrozenTrial, c: dict, cost_objectives: list[str]) -> bool:
    return all(t.user_attrs.get(o, float("inf")) <= c[o] for o in cost_objectives)


def early_stopper(finished: list[FrozenTrial], c: dict, cost_objectives: list[str],
                  margin: float, acc_index: int = 0) -> Callable[[float], Optional[str]]:
    """``stop_check`` for :func:`search.proxy.distilled_proxy`: a reason to stop when a
    finished, fully trained trial at least as cheap on every cost objective beat this
    candidate's checkpoint score (``proxy.score``) by ``margin``, both at the same checkpoint
    and at its end (so the stopped trial, recorded with its checkpoint score, is dominated)."""
    def checkpoint_score(t: FrozenTrial) -> Optional[float]:
        # trials recorded before the proxy had a score kept their accuracy only
        return t.user_attrs.get("proxy_checkpoint_score",
                                t.user_attrs.get("proxy_checkpoint_accuracy"))

    rivals = [t for t in finished
              if checkpoint_score(t) is not None
              and "proxy_stopped_at" not in t.user_attrs and "skipped" not in t.user_attrs
              and _cheaper_or_equal(t, c, cost_objectives)]

    def check(partial: float) -> Optional[str]:
        for t in rivals:
            final, at_checkpoint = t.values[acc_index], checkpoint_score(t)
            if min(at_checkpoint, final) >= partial + margin:
                return (f"dominated by trial {t.number} (checkpoint score "
                        f"{at_checkpoint:.4f}, final {final:.4f} >= {partial:.4f} + margin "
                        f"{margin})")
        return None

    return check


def prefilter_reason(finished: list[FrozenTrial], c: dict, scores: dict,
                     cost_objectives: list[str], score: str, dominated_by: int
                     ) -> Optional[str]:
    """Why a candidate is hopeless: ``dominated_by`` earlier trials at least as cheap on every
    cost objective have a higher zero-cost ``score``; None when it should be trained."""
    key = f"zc_{score}"
    better = [t.number for t in finished if t.user_attrs.get(key, float("-inf")) > scores[score]
              and _cheaper_or_equal(t, c, cost_objectives)]
    if len(better) < dominated_by:
        return None
    return (f"pre-filter: {len(better)} earlier trials (e.g. {better[:3]}) are as cheap and "
            f"score higher on {score} ({scores[score]:.4g})")


class Objective:
    """Called by Optuna once per trial; returns the objective values in config order.

    ``proxy``: the accuracy proxy (:mod:`search.proxies`; by default the one ``proxy.kind``
    names, prepared by the caller). ``images``: a fixed minibatch (uint8, N C H W) of the
    proxy's training images, for NASWOT. ``promoted``: the proxy that scores promoted trials
    (``proxy.promote``: :mod:`search.promote`), prepared by the caller.
    """

    def __init__(self, cfg: Config, in_chans: int, input_size: int, num_classes: int,
                 device_model: DeviceModel, proxy: Proxy | None,
                 images: torch.Tensor, promoted: Proxy | None = None) -> None:
        self.cfg = cfg
        self.shape = dict(in_chans=in_chans, input_size=input_size, num_classes=num_classes)
        self.device_model = device_model
        self.proxy = proxy if proxy is not None else make_proxy(cfg)
        self.promoted = promoted
        self.images = images
        self.cost_objectives = [o for o in cfg.search.objectives if o != "accuracy"]

    def sample(self, trial: optuna.trial.BaseTrial) -> Arch:
        return sample_arch(trial, self.cfg.space, bits=self.cfg.device.bits, **self.shape)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        with batched_writes(trial):  # one storage transaction for the architecture
            arch = self.sample(trial)
            c = costs(arch, self.device_model, self.cfg.finetune)
            trial.set_user_attr("arch_json", arch.to_json(indent=None))
            trial.set_user_attr("arch_id", arch.arch_id)
            for key in ("latency_ms", "energy_mj", "size_kib", "peak_memory_kib",
                        "train_memory_kib", "params", "macs", "provenance"):
                trial.set_user_attr(key, c[key])
            trial.set_user_attr("bits", list(arch.bits))
            scores = zero_cost_scores(arch, self.images, self.cfg.seed)
            for key in ("naswot", "synflow"):
                trial.set_user_attr(f"zc_{key}", scores[key])
            trial.set_user_attr("zc_cost_s", scores["cost_s"])
        over = constraint_values(self.cfg, c)
        for key, value in over.items():
            trial.set_constraint(key, value)
        finished: list[FrozenTrial] | None = None

        def read_finished() -> list[FrozenTrial]:
            nonlocal finished
            if finished is None:
                finished = trial.study.get_trials(deepcopy=False,
                                                  states=(TrialState.COMPLETE,))
            return finished

        info = TrialInfo(scores, c, read_finished)
        proxy = self.proxy
        if PROMOTE_OF in trial.user_attrs:
            if self.promoted is None:
                raise RuntimeError(f"trial {trial.number} promotes trial "
                                   f"{trial.user_attrs[PROMOTE_OF]} but no promoted proxy "
                                   "is prepared (proxy.promote.to)")
            proxy = self.promoted
        if any(v > 0 for v in over.values()):
            result = {"score": proxy.floor(info), "accuracy": 0.0, "cost_s": 0.0}
            trial.set_user_attr("skipped", "over budget: " + ", ".join(
                f"{k} {c[k]:.3g} > {getattr(self.cfg.budget, k):.3g}" for k, v in over.items()
                if v > 0))
        elif hopeless := proxy.prefilter(info):
            result = {"score": proxy.floor(info), "accuracy": 0.0, "cost_s": 0.0}
            trial.set_user_attr("skipped", hopeless)
        else:
            if proxy.calibration is not None:
                trial.set_user_attr("score_calibration", proxy.calibration["key"])
            result = proxy.score(arch, info)
        with batched_writes(trial):
            trial.set_user_attr("proxy", proxy.kind)
            trial.set_user_attr(FIDELITY, proxy.kind)
            trial.set_user_attr("proxy_score_name", proxy.score_name())  # the objective's
            for key, value in result.items():
                trial.set_user_attr(f"proxy_{key}", value)
        values = {"accuracy": result["score"], **c}
        return tuple(float(values[o]) for o in self.cfg.search.objectives)


def fastest_possible(objective: Objective, n: int = 2000) -> dict:
    """Smallest predicted latency, energy and size among ``n`` uniform samples plus the
    smallest choice everywhere (used to say how far a budget is out of reach)."""
    from spaces.space import RandomChoices

    class Smallest(RandomChoices):
        def suggest_categorical(self, name: str, choices: list) -> object:
            if name.endswith("_bits"):
                return min(choices)
            if name.endswith("_block"):
                return "ds" if "ds" in choices else choices[0]
            if name.endswith("prune_ratio"):
                return max(choices)
            return min(choices, key=lambda v: (isinstance(v, str), v))

    best: dict[str, float] = {}
    for chooser in [Smallest(0)] + [RandomChoices(10_000 + i) for i in range(n)]:
        c = costs(objective.sample(chooser), objective.device_model, objective.cfg.finetune)
        for key in BUDGETS:
            best[key] = min(best.get(key, float("inf")), c[key])
    return best
