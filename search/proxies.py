"""The accuracy proxies behind one small interface: what the search calls to prepare a proxy,
score a trial, and say what the score is (in the study, its tables and the model card).

- :class:`DistillProxy` (``proxy=distill``): each candidate trains briefly against the
  teacher (:func:`search.proxy.distilled_proxy`), with early stopping and the zero-cost
  pre-filter;
- :class:`SupernetProxy` (``proxy=supernet``): the space's weight-sharing supernet, trained
  once (:mod:`search.supernet`), scores each candidate's sub-network;
- :class:`ZeroCostProxy` (``proxy=zero_cost``): NASWOT of the untrained network.

The score options (``proxy.score``: fidelity, accuracy, fidelity+naswot) apply to the two
that train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import optuna
import torch
from optuna.trial import FrozenTrial
from rich.console import Console
from tqdm import tqdm

from search.config import Config
from search.data import Dataset, size_note
from search.proxy import (
    COMBINED,
    ProxyData,
    calibrate,
    calibration_archs,
    calibration_record,
    calibration_steps,
    combined_score,
    distilled_proxy,
    naswot,
    prepare_proxy_data,
    to_device,
    zero_cost_proxy,
)
from search.teacher import TeacherCache
from spaces.arch import Arch

__all__ = ["DistillProxy", "make_proxy", "Proxy", "SupernetProxy", "TrialInfo",
           "ZeroCostProxy"]


@dataclass
class TrialInfo:
    """What a proxy may use of the trial it scores: its zero-cost scores, its predicted
    costs, and the study's finished trials (read only when a proxy asks for them)."""

    scores: dict
    costs: dict
    finished: Callable[[], list[FrozenTrial]] = field(default=lambda: [])


class Proxy:
    """An accuracy proxy. Subclasses say what they are (``kind``, :meth:`score_name`), get
    ready once per run (:meth:`prepare`) and score a trial (:meth:`score`)."""

    kind = ""
    trains = True  # whether it measures a validation accuracy (shown beside its score)
    # what that accuracy is, in a line (the Pareto table, the model card)
    accuracy_meaning = ""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.calibration: Optional[dict] = None  # fidelity+naswot: the scales, once prepared

    def score_name(self) -> str:
        """What the study's accuracy objective holds."""
        return self.cfg.proxy.score

    def size_note(self, dataset: Dataset) -> Optional[str]:
        """A line where the dataset is smaller than the proxy's settings assume."""
        p = self.cfg.proxy
        return size_note(dataset, self.cfg.data.val_images, p.train_images, p.val_images)

    def prepare(self, dataset: Dataset, study: Optional[optuna.Study], shape: dict,
                images: torch.Tensor, console: Console) -> None:
        """Get ready to score the study's trials (teacher, data, training, calibration;
        ``study`` None: scales of its own, not the study's, as the front's re-scoring
        needs)."""

    def prefilter(self, info: TrialInfo) -> Optional[str]:
        """Why a candidate need not be scored (None: score it)."""
        return None

    def floor(self, info: TrialInfo) -> float:
        """The score of a candidate that is not scored (over budget, pre-filtered): the
        lowest a scored one could get."""
        if self.cfg.proxy.score == COMBINED and self.calibration:
            return combined_score(0.0, info.scores["naswot"], self.calibration)
        return 0.0

    def score(self, arch: Arch, info: TrialInfo) -> dict:
        """The trial's result: ``score`` (the accuracy objective), ``accuracy`` (None where
        nothing is measured), ``cost_s`` and what else the proxy records."""
        raise NotImplementedError

    def rescore(self, info: TrialInfo) -> Optional[Callable[[float], float]]:
        """The map from a trained score to the objective's (fidelity+naswot), or None."""
        if self.cfg.proxy.score != COMBINED:
            return None
        cal = self.calibration
        if cal is None:
            raise RuntimeError("proxy.score=fidelity+naswot needs the calibration (prepare "
                               "sets it before the trials)")
        return lambda f: combined_score(f, info.scores["naswot"], cal)


class ZeroCostProxy(Proxy):
    """``proxy=zero_cost``: NASWOT of the untrained network stands in for accuracy."""

    kind = "zero_cost"
    trains = False

    def score_name(self) -> str:
        return "naswot"

    def size_note(self, dataset: Dataset) -> Optional[str]:
        return None

    def floor(self, info: TrialInfo) -> float:
        return 0.0

    def score(self, arch: Arch, info: TrialInfo) -> dict:
        return zero_cost_proxy(info.scores)


class _TrainedProxy(Proxy):
    """A proxy that scores against the cached teacher on the proxy's data."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.data: Optional[ProxyData] = None
        self.images: Optional[torch.Tensor] = None
        self.shape: dict = {}

    def prepare(self, dataset: Dataset, study: Optional[optuna.Study], shape: dict,
                images: torch.Tensor, console: Console) -> None:
        cfg = self.cfg
        teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                               cfg.seed)
        teacher.model()
        meta = teacher.meta
        console.print(f"teacher {meta.get('model')}: test accuracy "
                      f"{100 * meta.get('test_accuracy', 0):.2f}% (cached in {teacher.dir})")
        device = cfg.search.torch_device()
        self.data = to_device(prepare_proxy_data(cfg, dataset, teacher), device)
        self.teacher_recipe = teacher.recipe
        self.images, self.shape = images, shape
        if device != "cpu":
            console.print(f"candidates train on {torch.cuda.get_device_name(0)}")
        self._ready(console)
        if cfg.proxy.score == COMBINED:
            self.calibration = (self._study_calibration(study, console) if study is not None
                                else self.calibrate_scales(console))

    def _ready(self, console: Console) -> None:
        """What the proxy does once its data is ready (the supernet trains here)."""

    def calibrate_scales(self, console: Optional[Console] = None) -> dict:
        """The scales of fidelity+naswot for this proxy (see :func:`combined_score`)."""
        raise NotImplementedError

    def _study_calibration(self, study: optuna.Study, console: Console) -> dict:
        """The scales of ``proxy.score=fidelity+naswot``: the study's own where it recorded
        them (a resumed study or another worker scores with exactly those), else calibrated
        here and recorded in the study."""
        recorded = study.user_attrs.get("score_calibration")
        if recorded:
            return recorded
        cal = self.calibrate_scales(console)
        console.print(f"  fidelity {cal['fidelity']['mean']:.4f} +- "
                      f"{cal['fidelity']['std']:.4f}, NASWOT {cal['naswot']['mean']:.1f} +- "
                      f"{cal['naswot']['std']:.1f} (took {cal['seconds']:.0f} s)")
        # Workers that started together may each have calibrated: the first recorded wins,
        # so every trial of the study is scored with one set of scales (each records its key).
        recorded = study.user_attrs.get("score_calibration")  # read from the storage again
        if recorded:
            return recorded
        study.set_user_attr("score_calibration", cal)
        return cal


class DistillProxy(_TrainedProxy):
    """``proxy=distill``: each candidate trains briefly against the teacher's soft labels."""

    kind = "distill"
    accuracy_meaning = ("validation accuracy after the proxy's brief training, a ranking "
                        "signal; the export trains longer and measures test accuracy")

    def calibrate_scales(self, console: Optional[Console] = None) -> dict:
        cfg = self.cfg
        args = (cfg, self.data, self.images, self.shape, Path(cfg.cache_dir))
        cal = calibrate(*args, cached_only=True)
        if cal is None and console is not None:
            console.print(f"proxy.score={COMBINED}: scales from {cfg.proxy.calibration_archs} "
                          "architectures of the space, trained now to put fidelity and NASWOT "
                          "on one scale (once per data, teacher and proxy; cached in "
                          f"{Path(cfg.cache_dir) / 'calibration'})", highlight=False,
                          soft_wrap=True)
        if cal is None:
            with tqdm(total=calibration_steps(cfg, self.data), unit="step",
                      desc="calibrating the score") as bar:
                cal = calibrate(*args, on_step=lambda _: bar.update())
        return cal

    def wants_finished(self) -> bool:
        p = self.cfg.proxy
        return p.early_stop.at is not None or p.prefilter.dominated_by is not None

    def prefilter(self, info: TrialInfo) -> Optional[str]:
        from search.objective import prefilter_reason

        p = self.cfg.proxy
        if p.prefilter.dominated_by is None:
            return None
        return prefilter_reason(info.finished(), info.costs, info.scores,
                                self.cost_objectives(), p.prefilter.score,
                                p.prefilter.dominated_by)

    def cost_objectives(self) -> list[str]:
        return [o for o in self.cfg.search.objectives if o != "accuracy"]

    def score(self, arch: Arch, info: TrialInfo) -> dict:
        from search.objective import early_stopper

        p = self.cfg.proxy
        margin, rescore = p.early_stop.margin, self.rescore(info)
        if rescore is not None:
            margin = margin / self.calibration["fidelity"]["std"]  # the margin, in new units
        stop = (early_stopper(info.finished(), info.costs, self.cost_objectives(), margin,
                              self.cfg.search.objectives.index("accuracy"))
                if p.early_stop.at is not None else None)
        return distilled_proxy(arch, self.data, self.cfg, stop_check=stop, rescore=rescore)


class SupernetProxy(_TrainedProxy):
    """``proxy=supernet``: the space's supernet, trained once, scores each sub-network."""

    kind = "supernet"
    accuracy_meaning = ("validation accuracy of the trial's sub-network of the supernet "
                        "(shared weights, batch norm recalibrated), a ranking signal; the "
                        "export trains the model on its own and measures test accuracy")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.net = None
        self.path: Optional[Path] = None
        self.supernet_key = ""  # its fingerprint's hash, once prepared

    def _ready(self, console: Console) -> None:
        import json

        from search.supernet import train_supernet

        cfg = self.cfg
        device = cfg.search.torch_device()
        bar: list = []

        def on_step(step: int, total: int) -> None:
            if not bar:
                console.print("training the space's supernet once (cached for this data, "
                              "teacher, space and recipe; a killed training resumes at its "
                              "last epoch)", highlight=False, soft_wrap=True)
                bar.append(tqdm(total=total, initial=step - 1, unit="step",
                                desc="supernet"))
            bar[0].update(step - bar[0].n)

        try:
            self.net, self.path = train_supernet(cfg, self.data, self.shape, on_step=on_step,
                                                 device=device, teacher=self.teacher_recipe)
        finally:
            if bar:
                bar[0].close()
        # the key its manifest vouches for (recorded with every trial it scores)
        manifest = json.loads(self.path.with_name("manifest.json").read_text())
        self.supernet_key = manifest["fingerprint_hash"]
        console.print(f"supernet {self.path}", highlight=False, soft_wrap=True)

    def _calibration_x(self) -> torch.Tensor:
        return self.data.train_x[:self.cfg.proxy.supernet.calibration_images]

    def calibrate_scales(self, console: Optional[Console] = None) -> dict:
        """The scales of fidelity+naswot from ``proxy.calibration_archs`` sampled
        sub-networks, scored by the supernet (seconds: nothing trains)."""
        import time

        from search.supernet import score_sub_network

        start = time.time()
        archs = calibration_archs(self.cfg, self.shape)
        fidelities = [score_sub_network(self.net, a, self.data, "fidelity",
                                        self._calibration_x())["trained_score"] for a in archs]
        return calibration_record(f"supernet-{self.supernet_key}", archs, fidelities,
                                  [naswot(a, self.images, self.cfg.seed) for a in archs],
                                  time.time() - start)

    def score(self, arch: Arch, info: TrialInfo) -> dict:
        from search.supernet import score_sub_network

        out = score_sub_network(self.net, arch, self.data, self.cfg.proxy.score,
                                self._calibration_x())
        rescore = self.rescore(info)
        out["score"] = out["trained_score"] if rescore is None else rescore(out["trained_score"])
        out["supernet"] = self.supernet_key
        return out


PROXIES = {p.kind: p for p in (DistillProxy, SupernetProxy, ZeroCostProxy)}


def make_proxy(cfg: Config) -> Proxy:
    """The proxy ``proxy.kind`` names."""
    return PROXIES[cfg.proxy.kind](cfg)
