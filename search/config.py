"""Typed configuration: every setting and its default, once. The dataclasses are registered
in Hydra's ``ConfigStore`` (as ``edgenas``, the first entry of ``conf/config.yaml``'s defaults
list); the YAML files of ``conf/`` hold only what an option changes. Hydra's ``DictConfig``
stops here: entry points call :func:`load` and library code only sees these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latency_models.devices import CONF_DIR, DeviceConfig, known_devices
from search.errors import UserError
from search.proxy_config import ProxyConfig
from search.urls import STORAGE_SCHEMES, redact
from spaces.arch import ALL_BITS
from spaces.files import SAFE_NAME
from spaces.schemes import FinetuneConfig
from spaces.space import SpaceConfig, SpaceError

__all__ = ["BASELINES", "BudgetConfig", "BUDGETS", "CONF_DIR", "Config", "DataConfig",
           "ExportConfig", "FASHION_MNIST_ROOT", "fit_space", "group_options", "load",
           "OBJECTIVES", "register", "ReportConfig", "SAMPLERS", "SCHEMA", "SearchConfig",
           "space_options", "StorageConfig", "StudyConfig", "validate"]

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
