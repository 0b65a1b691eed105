"""The accuracy proxy's settings (``proxy=``, ``proxy.*``): what a candidate's score is and
how each proxy computes it (the distilled proxy's training, its teacher, early stopping and
the zero-cost pre-filter; the supernet's recipe; promotions and re-scoring). Each settings
class validates itself (``problems()``); :mod:`search.config` composes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

__all__ = ["COMBINED_SCORE", "EarlyStopConfig", "PrefilterConfig", "PromoteConfig", "PROXY_KINDS",
           "PROXY_SCORES", "ProxyConfig", "SUPERNET_SCHEDULES", "SupernetConfig", "TeacherConfig",
           "ZERO_COST_SCORES"]


@dataclass
class TeacherConfig:
    model: str = "resnet10t"  # a timm model name, trained from scratch once per dataset, cached
    epochs: int = 2  # the teacher's own training, once per dataset
    batch: int = 128
    lr: float = 0.05
    # your own teacher: a .safetensors file (or torch weights, loaded with weights_only)
    checkpoint: Optional[str] = None


@dataclass
class EarlyStopConfig:
    """Stop a candidate's training at a checkpoint when its partial result is already
    dominated: a finished trial at least as cheap on every cost objective is more accurate,
    both at the same checkpoint and at its end, by at least ``margin``."""

    at: Optional[float] = 0.75  # fraction of the proxy's steps; null: never stop early
    margin: float = 0.01  # score (accuracy or fidelity, 0.01 = 1 point) it must lose by


@dataclass
class PromoteConfig:
    """Multi-fidelity during the search: the cheap proxy (``proxy=supernet`` or
    ``zero_cost``) scores every trial, and the members of its Pareto front are promoted to the
    distilled proxy while the search runs: each is run again as a new trial of the same
    architecture, scored by ``to``, and takes the place of its cheap twin in the front, the
    table and ``select=best``."""

    to: Optional[str] = None  # distill: the proxy promoted trials are scored by; null: off
    # the most of this run's trial time that promotions may take (0.5: as long as the cheap
    # trials); a promotion starts whenever they have taken less
    share: float = 0.5
    after: int = 20  # complete cheap trials before the first promotion (a front to promote)


ZERO_COST_SCORES = ("naswot", "synflow", "params")
# What the distilled proxy reports as the study's accuracy objective: validation accuracy, or
# fidelity to the teacher, exp(-KL(teacher || candidate)) on the validation images (in (0, 1],
# 1 = the teacher's predictions exactly), which ranks architectures more like full training.
COMBINED_SCORE = "fidelity+naswot"  # search.proxy.combined_score
PROXY_SCORES = ("fidelity", "accuracy", COMBINED_SCORE)
PROXY_KINDS = ("distill", "supernet", "zero_cost")
SUPERNET_SCHEDULES = ("uniform", "progressive")


@dataclass
class PrefilterConfig:
    """Skip training candidates whose zero-cost score (computed for every trial) is beaten by
    ``dominated_by`` earlier trials that are at least as cheap on every cost objective."""

    score: str = "naswot"  # naswot | synflow | params
    dominated_by: Optional[int] = None  # null: off


@dataclass
class SupernetConfig:
    """``proxy=supernet``: one weight-sharing supernet of the space, trained once per dataset,
    space, teacher and recipe by distillation (sandwich rule), scores each trial's
    sub-network after recalibrating its batch norm."""

    epochs: int = 12  # over proxy.train_images, the first `warmup_epochs` the largest only
    warmup_epochs: int = 1  # the largest sub-network alone, then channels sorted by importance
    batch: int = 64
    lr: float = 0.05
    random_archs: int = 3  # sampled sub-networks per step, beside the largest (and smallest)
    # how the sampled sub-networks grow after the warm-up: uniform (over the whole space from
    # the start) | progressive (Once-for-All's progressive shrinking: kernel, then depth, then
    # widths, then the rest become elastic over equal parts of the remaining epochs)
    schedule: str = "uniform"
    # true: the sandwich rule, the smallest sub-network every step too (it ranked worse here:
    # docs/results/supernet.md)
    smallest: bool = False
    # true: in-place distillation (BigNAS, Once-for-All): the sampled sub-networks learn from
    # the largest's soft predictions of the same batch, the largest from the teacher's
    inplace: bool = False
    calibration_images: int = 256  # training images that recalibrate a sub-network's norms
    # a trained supernet (its .safetensors, a manifest .json beside it); null: the cache's
    file: Optional[str] = None

    def recipe(self) -> dict:
        """What the trained weights depend on (not ``file``); settings added since the first
        supernets shipped count only where they differ from their default, so the fingerprints
        (and the studies) of supernets trained before them stay valid."""
        out = {k: v for k, v in asdict(self).items() if k != "file"}
        if not out["inplace"]:
            del out["inplace"]
        return out


@dataclass
class ProxyConfig:
    """The accuracy proxy (``proxy=``). The defaults are the distilled proxy's
    (``proxy=distill``); what each setting costs and how well it ranks: docs/results/proxy.md."""

    # distill | supernet (a weight-sharing supernet scores each trial in about a second) |
    # zero_cost (NASWOT of the untrained network, no training)
    kind: str = "distill"
    train_images: int = 12000  # fixed training subset
    val_images: int = 5000  # held-out validation images (from the training split)
    epochs: int = 4  # the first half dense, then pruned and fine-tuned
    batch: int = 64  # twice the steps of batch 128 at about the same cost; ranks better
    lr: float = 0.05  # SGD with momentum, cosine schedule
    temperature: float = 4.0  # of the teacher's and the candidate's softened predictions
    alpha: float = 0.7  # weight of the distillation term; 1 - alpha on the hard labels
    # The value of the accuracy objective. fidelity+naswot: fidelity plus the zero-cost NASWOT
    # score, each standardized over `calibration_archs` architectures sampled from the space
    # (trained once and cached), equal weights; it ranks best. fidelity: exp(-KL(teacher ||
    # candidate)) on the validation images. accuracy: validation accuracy. All are recorded.
    score: str = COMBINED_SCORE
    calibration_archs: int = 8  # fidelity+naswot: architectures that set both scales
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    prefilter: PrefilterConfig = field(default_factory=PrefilterConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    # distill: once the search ends, the Pareto front's members are scored again by the
    # distilled proxy (proxy.score as set), before the table (multi-fidelity: a cheap proxy
    # searches, the better one ranks its front); recorded in the study, shown beside the
    # search's score, and what select=best exports by. null: off
    rescore: Optional[str] = None
    promote: PromoteConfig = field(default_factory=PromoteConfig)

    def problems(self) -> list[str]:
        problems = []
        if self.kind not in PROXY_KINDS:
            problems.append(f"proxy.kind={self.kind!r} is not one of {list(PROXY_KINDS)}")
        sn = self.supernet
        if min(sn.epochs, sn.batch, sn.calibration_images) < 1 or sn.random_archs < 0 or not (
                0 <= sn.warmup_epochs < sn.epochs):
            problems.append("proxy.supernet: epochs, batch and calibration_images must be at "
                            "least 1, random_archs at least 0, warmup_epochs from 0 to epochs "
                            "- 1")
        if self.promote.to not in (None, "distill"):
            problems.append(f"proxy.promote.to={self.promote.to!r} is not 'distill' or null")
        elif self.promote.to == self.kind:
            problems.append("proxy.promote.to=distill promotes the front of a cheaper proxy "
                            "(proxy=supernet or proxy=zero_cost) to the distilled proxy; with "
                            "proxy=distill every trial is scored by it already: drop it")
        if not 0 < self.promote.share < 1:
            problems.append(f"proxy.promote.share={self.promote.share} must be between 0 and "
                            "1 (the part of the trials' time promotions may take)")
        if self.promote.after < 1:
            problems.append(f"proxy.promote.after={self.promote.after} must be at least 1")
        if self.rescore not in (None, "distill"):
            problems.append(f"proxy.rescore={self.rescore!r} is not 'distill' or null")
        elif self.rescore == self.kind:
            problems.append("proxy.rescore=distill re-scores the front of a cheaper proxy "
                            "(proxy=supernet or proxy=zero_cost); with proxy=distill it would "
                            "train the same candidates again: drop it")
        if sn.schedule not in SUPERNET_SCHEDULES:
            problems.append(f"proxy.supernet.schedule={sn.schedule!r} is not one of "
                            f"{list(SUPERNET_SCHEDULES)}")
        for name in ("train_images", "val_images", "epochs", "batch"):
            if getattr(self, name) < 1:
                problems.append(f"proxy.{name}={getattr(self, name)} must be at least 1 "
                                "(use proxy=zero_cost for a search without training)")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            problems.append("proxy.alpha must be in [0, 1] and proxy.temperature positive")
        stop = self.early_stop
        if stop.at is not None and not 0 < stop.at < 1:
            problems.append(f"proxy.early_stop.at={stop.at} must be a fraction of the proxy's "
                            "training between 0 and 1 (or null: never stop early)")
        if stop.margin < 0:
            problems.append(f"proxy.early_stop.margin={stop.margin} must be 0 or more")
        if self.score not in PROXY_SCORES:
            problems.append(f"proxy.score={self.score!r} is not one of {list(PROXY_SCORES)}")
        elif self.score == COMBINED_SCORE and self.calibration_archs < 2:
            problems.append(f"proxy.calibration_archs={self.calibration_archs} must be at "
                            "least 2 (the spread of the scores over them puts both on one "
                            "scale)")
        if self.prefilter.score not in ZERO_COST_SCORES:
            problems.append(f"proxy.prefilter.score={self.prefilter.score!r} is not one of "
                            f"{list(ZERO_COST_SCORES)}")
        if self.prefilter.dominated_by is not None and self.prefilter.dominated_by < 1:
            problems.append(f"proxy.prefilter.dominated_by={self.prefilter.dominated_by} must "
                            "be at least 1 (or null: no pre-filter)")
        if self.teacher.epochs < 1:
            problems.append(f"proxy.teacher.epochs={self.teacher.epochs} must be at least 1")
        return problems
