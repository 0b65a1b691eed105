"""The trial objective: sample an architecture, price it on the device, score it.

Cheap numbers first (latency, energy, size from the device model; no training), then the
budgets as Optuna constraints (``value - budget <= 0`` is feasible). A candidate over budget is
not trained: it gets proxy accuracy 0 and is recorded as skipped.
"""

from __future__ import annotations

import optuna

from latency_models.model import DeviceModel
from latency_models.ops import arch_ops
from search.config import Config
from search.proxy import ProxyData, distilled_proxy, zero_cost_proxy
from search.storage import batched_writes
from spaces.arch import Arch
from spaces.space import sample_arch

DIRECTIONS = {"accuracy": "maximize", "latency_ms": "minimize", "energy_mj": "minimize",
              "size_kib": "minimize"}


def costs(arch: Arch, device_model: DeviceModel) -> dict:
    """Predicted latency and energy, size, parameters and MACs of the deployed network."""
    pred = device_model.predict(arch_ops(arch))
    return {"latency_ms": pred.latency_ms, "energy_mj": pred.energy_mj,
            "size_kib": arch.size_kib(), "params": arch.params(), "macs": arch.macs(),
            "provenance": pred.provenance}


def constraint_values(cfg: Config, c: dict) -> dict[str, float]:
    out = {}
    for name in ("latency_ms", "energy_mj", "size_kib"):
        budget = getattr(cfg.budget, name)
        if budget is not None:
            out[name] = c[name] - budget
    return out


class Objective:
    """Called by Optuna once per trial; returns the objective values in config order."""

    def __init__(self, cfg: Config, in_chans: int, input_size: int, num_classes: int,
                 device_model: DeviceModel, proxy_data: ProxyData | None) -> None:
        self.cfg = cfg
        self.shape = dict(in_chans=in_chans, input_size=input_size, num_classes=num_classes)
        self.device_model = device_model
        self.proxy_data = proxy_data

    def sample(self, trial: optuna.trial.BaseTrial) -> Arch:
        return sample_arch(trial, self.cfg.space, bits=self.cfg.device.bits, **self.shape)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        with batched_writes(trial):  # one storage transaction for the architecture
            arch = self.sample(trial)
            c = costs(arch, self.device_model)
            trial.set_user_attr("arch_json", arch.to_json(indent=None))
            trial.set_user_attr("arch_id", arch.arch_id)
            for key in ("latency_ms", "energy_mj", "size_kib", "params", "macs", "provenance"):
                trial.set_user_attr(key, c[key])
            trial.set_user_attr("bits", list(arch.bits))
        over = constraint_values(self.cfg, c)
        for key, value in over.items():
            trial.set_constraint(key, value)
        if any(v > 0 for v in over.values()):
            result = {"accuracy": 0.0, "cost_s": 0.0}
            trial.set_user_attr("skipped", "over budget: " + ", ".join(
                f"{k} {c[k]:.3g} > {getattr(self.cfg.budget, k):.3g}" for k, v in over.items()
                if v > 0))
        elif self.cfg.proxy.kind == "zero_cost":
            result = zero_cost_proxy(arch)
        else:
            result = distilled_proxy(arch, self.proxy_data, self.cfg)
        with batched_writes(trial):
            trial.set_user_attr("proxy", self.cfg.proxy.kind)
            for key, value in result.items():
                trial.set_user_attr(f"proxy_{key}", value)
        values = {"accuracy": result["accuracy"], **c}
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
        c = costs(objective.sample(chooser), objective.device_model)
        for key in ("latency_ms", "energy_mj", "size_kib"):
            best[key] = min(best.get(key, float("inf")), c[key])
    return best
