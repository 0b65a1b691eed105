"""Typed configuration: every setting and its default, once. The dataclasses are registered
in Hydra's ``ConfigStore`` (as ``edgenas``, the first entry of ``conf/config.yaml``'s defaults
list); the YAML files of ``conf/`` hold only what an option changes. Hydra's ``DictConfig``
stops here: entry points call :func:`load` and library code only sees these dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latency_models.devices import CONF_DIR, DeviceConfig, known_devices
from search.errors import UserError
from search.urls import STORAGE_SCHEMES, redact
from spaces.arch import ALL_BITS
from spaces.files import SAFE_NAME
from spaces.schemes import FinetuneConfig
from spaces.space import SpaceConfig, SpaceError

__all__ = ["BASELINES", "BudgetConfig", "BUDGETS", "COMBINED_SCORE", "CONF_DIR", "Config",
           "DataConfig", "EarlyStopConfig", "ExportConfig", "FASHION_MNIST_ROOT", "fit_space",
           "group_options", "load", "OBJECTIVES", "PrefilterConfig",
           "PROXY_KINDS", "PROXY_SCORES", "ProxyConfig", "register", "ReportConfig",
           "SAMPLERS", "SCHEMA", "SearchConfig", "space_options",
           "StorageConfig", "StudyConfig", "SupernetConfig", "TeacherConfig", "validate",
           "ZERO_COST_SCORES"]

OBJECTIVES = ("accuracy", "latency_ms", "energy_mj", "size_kib", "peak_memory_kib",
              "train_memory_kib")
BUDGETS = OBJECTIVES[1:]  # every cost objective is also a budget (budget.NAME)
SAMPLERS = ("nsga2", "tpe", "random")


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's package puts it


@dataclass
class DataConfig:
    """The dataset (``data=``). The defaults are Fashion-MNIST's."""

    name: str = "fashion_mnist"
    kind: str = "fashion_mnist"  # fashion_mnist | imagefolder | synthetic
    root: Optional[str] = FASHION_MNIST_ROOT  # imagefolder: DIR/<class>/<image>
    in_chans: int = 1  # images are converted to this many channels
    # and resized to size x size; imagefolder: null follows the images (their size, or the
    # median of their shorter sides where sizes differ)
    size: Optional[int] = 28
    num_classes: int = 10  # imagefolder: 0, read from the folder
    val_images: int = 5000  # carved from the training set; the search never sees the test set
    synthetic_images: int = 512  # synthetic only

    def problems(self) -> list[str]:
        problems = []
        if self.kind not in ("fashion_mnist", "imagefolder", "synthetic"):
            problems.append(f"data.kind={self.kind!r} is not fashion_mnist, imagefolder or "
                            "synthetic")
        if self.size is not None and self.size < 1:
            problems.append(f"data.size={self.size} must be a positive number of pixels (or "
                            "null with data=imagefolder: the images' own size)")
        elif self.kind == "fashion_mnist" and self.size not in (None, 28):
            problems.append(f"data.size={self.size}: Fashion-MNIST's images are 28 x 28 px and "
                            "are not resized (a network resizes inside its graph, to "
                            "space.resolution); leave data.size out")
        return problems

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

@dataclass
class BudgetConfig:
    """Optuna constraints: a candidate over budget is not trained."""

    latency_ms: Optional[float] = None  # predicted latency on the device (ms); null: none
    energy_mj: Optional[float] = None  # predicted energy per image (mJ); null: none
    size_kib: Optional[float] = None  # weights at their bit-widths (KiB); null: none
    # peak activation memory of one inference, batch 1, at the layers' precisions (KiB)
    peak_memory_kib: Optional[float] = None
    # peak memory of one fine-tuning step (finetune.update at finetune.batch, KiB)
    train_memory_kib: Optional[float] = None

    def problems(self) -> list[str]:
        return [f"budget.{name}={getattr(self, name)} must be positive (or null for no budget)"
                for name in BUDGETS
                if getattr(self, name) is not None and getattr(self, name) <= 0]

@dataclass
class SearchConfig:
    sampler: str = "tpe"  # tpe (multi-objective TPE, Optuna 5's default) | nsga2 | random
    n_trials: int = 32  # the study's total; a resumed study only runs what is missing
    # This run's time for trials, in minutes (counted once the proxy is ready): no trial
    # starts after it; the study keeps what finished, and the same command continues it.
    # null: no limit (search.n_trials alone ends the run). E.g. search.minutes=30
    # search.n_trials=100000 for as many trials as fit in half an hour.
    minutes: Optional[float] = None
    # torch threads for the proxy's training; null: the cores other programs leave free,
    # chosen again before every trial (a shared machine stays fast)
    threads: Optional[int] = None
    # accuracy plus any of latency_ms, energy_mj, size_kib, peak_memory_kib, train_memory_kib
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "latency_ms"])
    population: int = 10  # NSGA-II population size
    heartbeat_s: int = 30  # a trial silent this long (killed worker) is failed and re-run
    device: str = "auto"  # where the proxy trains: auto (a GPU when present) | cpu | cuda
    # The sampler's own seed (null: seed), to repeat a search with other proposals on the
    # same data split, teacher and proxy training.
    sampler_seed: Optional[int] = None

    def thread_count(self) -> int:
        """Threads for work that starts now: ``threads``, or chosen from the free cores."""
        from spaces.threads import ThreadChooser

        return ThreadChooser(self.threads).choose()

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def problems(self) -> list[str]:
        problems = []
        if self.sampler not in SAMPLERS:
            problems.append(f"search.sampler={self.sampler!r} is not one of {list(SAMPLERS)}")
        if self.n_trials < 1:
            problems.append(f"search.n_trials={self.n_trials} must be at least 1")
        if self.minutes is not None and not self.minutes > 0:
            problems.append(f"search.minutes={self.minutes} must be above 0 (or null: no "
                            "time limit)")
        if self.heartbeat_s < 1:
            problems.append(f"search.heartbeat_s={self.heartbeat_s} must be at least 1 second")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"search.device={self.device!r} is not auto, cpu or cuda")
        elif self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                problems.append("search.device=cuda but torch sees no CUDA GPU here (torch "
                                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}"
                                "); use search.device=auto or cpu, or install a CUDA build of "
                                "torch")
        if self.threads is not None and self.threads < 1:
            problems.append(f"search.threads={self.threads} must be at least 1 (or null: "
                            "chosen from the free cores)")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives or "accuracy" not in self.objectives:
            problems.append(f"search.objectives={self.objectives} must include 'accuracy' and "
                            f"come from {list(OBJECTIVES)}")
        return problems

@dataclass
class StorageConfig:
    url: str = "sqlite:///studies/edgenas.db"  # relative to where you run
    retry_s: float = 600  # how long a worker retries a database server that went away

    def problems(self) -> list[str]:
        problems = []
        if not self.url.startswith(STORAGE_SCHEMES):
            problems.append(f"storage.url={redact(self.url)!r} is not a storage this tool "
                            "knows: use sqlite:///PATH (one process), journal:PATH (several "
                            "processes on one machine) or postgresql://USER@HOST[:PORT]/DB "
                            "(many machines); see storage=sqlite|journal|postgresql")
        if self.retry_s < 0:
            problems.append(f"storage.retry_s={self.retry_s} must be 0 or more seconds")
        return problems

@dataclass
class StudyConfig:
    # One study per device, dataset and space: the same command resumes it.
    name: str = "${device.name}-${data.name}-${space.name}"
    force: bool = False  # resume even if the setup changed (recorded in the study)

    def problems(self) -> list[str]:
        if SAFE_NAME.match(self.name):
            return []
        return [f"study.name={self.name!r} may only hold letters, digits, '.', '_' and '-' (at "
                "most 100, not starting with '.'), since it names files and folders"]

@dataclass
class ExportConfig:
    """``python -m search.export``: the final training of each exported model (knowledge
    distillation), its int8 calibration and its host latency measurement."""

    epochs: int = 4  # distillation from the teacher, then the weights are written
    batch: int = 128
    lr: float = 0.05
    calibration_images: int = 256  # training images that set the int8 model's scales
    latency_runs: int = 100  # onnxruntime runs per model on this machine (median)


# Hand-designed edge models that ``python -m search.report`` compares the found models with:
# name -> (where it comes from, what it is). Built by search/baselines.py.

    def problems(self) -> list[str]:
        return [] if self.epochs >= 1 else [f"export.epochs={self.epochs} must be at least 1"]

BASELINES = {
    "mobilenetv3_small_050": ("timm", "MobileNetV3-Small, width 0.5 (Howard et al. 2019)"),
    "mobilenetv3_small_075": ("timm", "MobileNetV3-Small, width 0.75"),
    "mobilenetv3_small_100": ("timm", "MobileNetV3-Small, width 1.0"),
    "lcnet_035": ("timm", "PP-LCNet, width 0.35 (Cui et al. 2021)"),
    "lcnet_050": ("timm", "PP-LCNet, width 0.5"),
    "lcnet_075": ("timm", "PP-LCNet, width 0.75"),
    "mnasnet_small": ("timm", "MnasNet-Small (Tan et al. 2019)"),
    "mobilenetv2_035": ("timm", "MobileNetV2, width 0.35 (Sandler et al. 2018)"),
    "mobilenetv2_050": ("timm", "MobileNetV2, width 0.5"),
    "squeezenet1_1": ("torchvision", "SqueezeNet 1.1 (Iandola et al. 2016)"),
}


@dataclass
class ReportConfig:
    """``python -m search.report``: the found models against hand-designed baselines."""

    # exported trials (default <out_dir>/export; the Pareto front is exported if missing)
    exports: Optional[str] = None
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    latency_rounds: int = 7  # interleaved rounds of host measurement (median over rounds)
    plotly_js: str = "inline"  # inline: the page works offline (about 4 MB) | cdn: small

    def problems(self) -> list[str]:
        problems = []
        if self.plotly_js not in ("inline", "cdn"):
            problems.append(f"report.plotly_js={self.plotly_js!r} is not 'inline' or 'cdn'")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            problems.append(f"report.baselines: unknown {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(BASELINES)}")
        if self.latency_rounds < 1:
            problems.append(f"report.latency_rounds={self.latency_rounds} must be at least 1")
        return problems

@dataclass
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    seed: int = 0  # the data split, the teacher, the proxy's training and the sampler
    out_dir: str = "outputs/${study.name}"
    cache_dir: str = ".cache/edgenas"  # teachers and calibrations, reused across studies
    select: str = "pareto"  # export: pareto | best | <trial number>
    out: Optional[str] = None  # export: its folder (default <out_dir>/export); report: its own
    # score: the architectures to score (a folder of arch.json files, or a JSON-lines file)
    archs: Optional[str] = None
    debug: bool = False  # true: show tracebacks


SCHEMA = "edgenas"  # the ConfigStore name of Config, first in conf/config.yaml's defaults


def register() -> None:
    """Register :class:`Config` in Hydra's ``ConfigStore`` (idempotent). Done on import, so
    that every composition (the commands, tests, scripts) sees the same schema."""
    try:
        from hydra.core.config_store import ConfigStore
    except ImportError:  # a training machine without Hydra (scripts/report_training.py)
        return
    ConfigStore.instance().store(name=SCHEMA, node=Config)


register()


def group_options(group: str) -> list[str]:
    """The options of a config group: shipped (``conf/GROUP``) and the user's
    (``./conf/GROUP``, where Hydra finds them too)."""
    from spaces.cli import group_options as options

    return options(CONF_DIR, group)


def space_options() -> dict[str, SpaceConfig]:
    """Every space of the ``space`` group (shipped and the user's), as configured."""
    spaces = {}
    for name in group_options("space"):
        for base in (Path.cwd() / "conf" / "space", CONF_DIR / "space"):
            if (base / f"{name}.yaml").is_file():
                try:
                    node = OmegaConf.merge(OmegaConf.structured(SpaceConfig),
                                           OmegaConf.load(base / f"{name}.yaml"))
                    spaces[name] = OmegaConf.to_object(node)
                except OmegaConfBaseException:
                    pass  # a broken file of the user's is reported when it is chosen
                break
    return spaces


def fit_space(cfg: Config, size: int) -> None:
    """Apply the chosen space to the data's image size (``SpaceConfig.for_input``): set
    ``cfg.space`` to the choices that apply.

    Raises:
        UserError: the space does not take images of ``size`` px; the message names the
            spaces that do.
    """
    try:
        cfg.space = cfg.space.for_input(size)
    except SpaceError as exc:
        others = [f"space={name} ({'-'.join(map(str, s.size_range()))} px, networks at "
                  f"{min(s.resolution)}-{max(s.resolution)} px)"
                  for name, s in space_options().items()
                  if name != cfg.space.name and s.takes(size)]
        hint = (f"use {' or '.join(others)}" if others else
                "no space of conf/space/ takes that size: resize the images with data.size=N "
                "or write a space of your own in ./conf/space/ (see docs/own-images.md)")
        raise UserError(f"{exc}. The data's images are {size} x {size} px (data.size); {hint}"
                        ", or set data.size to a size the space takes") from None


def load(cfg: DictConfig) -> Config:
    """Validate the composed Hydra config and return typed dataclasses.

    Raises:
        UserError: with a message that says what is wrong and how to fix it.
    """
    if "device" not in cfg or OmegaConf.is_missing(cfg.device, "name"):
        raise UserError("no device chosen: add +device=NAME to the command; known devices: "
                        + ", ".join(known_devices()))
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, cfg)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise UserError(f"bad configuration{' at ' + key if key else ''}: {msg}. Check the "
                        "spelling of the override and the type of its value") from None
    validate(config)
    return config


def validate(c: Config) -> None:
    """Every settings class's problems, in one message (:class:`UserError`)."""
    problems = [*c.study.problems(), *c.search.problems(), *c.storage.problems(),
                *c.budget.problems(), *finetune_problems(c.finetune), *device_problems(c.device),
                *c.proxy.problems(), *c.export.problems(), *c.report.problems(),
                *c.data.problems()]
    try:
        c.space.validate()
    except SpaceError as exc:
        problems.append(str(exc))
    if problems:
        raise UserError("; ".join(problems) + ".")


def finetune_problems(f: FinetuneConfig) -> list[str]:
    """``finetune.*``'s problems (the settings live beside the schemes, without Hydra)."""
    from spaces.schemes import parse_scheme

    problems = []
    try:
        parse_scheme(f.update)
    except ValueError as exc:
        problems.append(f"finetune.update: {exc}")
    if min(f.batch, f.epochs, f.threads) < 1 or f.lr <= 0:
        problems.append("finetune.batch, finetune.epochs and finetune.threads must be at least "
                        "1 and finetune.lr positive")
    return problems


def device_problems(d: DeviceConfig) -> list[str]:
    if not d.bits or any(b not in ALL_BITS for b in d.bits):
        return [f"device.bits={d.bits} must be a non-empty subset of {list(ALL_BITS)}"]
    return []
