"""The distillation teacher: trained once per dataset and recipe, cached, or the user's own.

Cache layout (all written atomically, so a killed run leaves nothing a later run trusts):
``<cache_dir>/teacher/<key>/model.safetensors``, ``meta.json`` (recipe, accuracies, time) and
``logits-<indices hash>.safetensors`` (soft labels for a set of training images).
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from search.data import Dataset
from search.errors import UserError
from search.proxy_config import TeacherConfig
from search.train import Recipe, Trainer, accuracy, predict_logits
from spaces.files import atomic_path, write_text

__all__ = ["build_teacher", "load_weights", "TEACHER_MAX_STRETCH", "TEACHER_MIN_STEPS",
           "TEACHER_STRETCH_FROM", "TEACHER_VERSION", "TeacherCache"]

TEACHER_VERSION = 1
# A teacher trains at least this many optimizer steps (TeacherCache.epochs), stretching its
# epochs at most this many times.
TEACHER_MIN_STEPS = 800
TEACHER_MAX_STRETCH = 20
TEACHER_STRETCH_FROM = 1000  # training images


def build_teacher(cfg: TeacherConfig, dataset: Dataset) -> nn.Module:
    import timm

    try:
        return timm.create_model(cfg.model, pretrained=False, num_classes=dataset.num_classes,
                                 in_chans=dataset.in_chans)
    except RuntimeError as exc:
        raise UserError(f"proxy.teacher.model={cfg.model!r} is not a timm model ({exc}); "
                        "pick one from timm.list_models(), e.g. resnet10t") from None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict without ever unpickling code: safetensors, or torch weights_only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"teacher checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"teacher checkpoint {path} is not a valid safetensors file "
                            f"({exc}); export it again with safetensors.torch.save_file") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"teacher checkpoint {path} was refused: it is corrupt or holds "
                        f"objects other than tensors, which are never unpickled ({first}); "
                        "save a plain state_dict, preferably as .safetensors") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                        dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"teacher checkpoint {path} is not a state_dict of tensors")
    return state


class TeacherCache:
    """Finds, trains or loads the teacher, and caches its soft labels."""

    def __init__(self, cfg: TeacherConfig, dataset: Dataset, cache_dir: str | Path,
                 val_images: int, seed: int = 0) -> None:
        self.cfg, self.dataset, self.seed, self.val_images = cfg, dataset, seed, val_images
        self.cache_dir = Path(cache_dir)
        self._model: nn.Module | None = None

    @cached_property
    def epochs(self) -> float:
        """The epochs the teacher trains: ``proxy.teacher.epochs``, raised on a small dataset
        to give it at least ``TEACHER_MIN_STEPS`` optimizer steps (at most
        ``TEACHER_MAX_STRETCH`` times the epochs asked for). Two epochs of Fashion-MNIST are
        860 steps; two epochs of 2,500 photos would be 40, and leave the teacher near chance.
        Under ``TEACHER_STRETCH_FROM`` training images nothing is stretched: so few images
        make a smoke test (the search says they rank architectures noisily), and many epochs
        over them would only memorize them."""
        train = len(self.dataset.split(self.val_images, self.seed)[0])
        per_epoch = max(1, math.ceil(train / self.cfg.batch))
        if self.cfg.epochs * per_epoch >= TEACHER_MIN_STEPS or train < TEACHER_STRETCH_FROM:
            return self.cfg.epochs
        return min(self.cfg.epochs * TEACHER_MAX_STRETCH,
                   round(TEACHER_MIN_STEPS / per_epoch, 3))

    @cached_property
    def recipe(self) -> dict:
        """Everything the teacher depends on (a user checkpoint by its content hash)."""
        recipe = dict(asdict(self.cfg), epochs=self.epochs, checkpoint=None, seed=self.seed,
                      val_images=self.val_images, version=TEACHER_VERSION,
                      data=self.dataset.fingerprint())
        if self.cfg.checkpoint:
            path = Path(self.cfg.checkpoint).expanduser()
            recipe["checkpoint"] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                    if path.is_file() else "missing")
        return recipe

    @cached_property
    def dir(self) -> Path:
        """The cache folder of this dataset and recipe."""
        key = hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / "teacher" / f"{self.dataset.name.replace(':', '-')}-{key}"

    @property
    def meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def model(self) -> nn.Module:
        if self._model is None:
            self._model = self._load_or_train()
        return self._model

    def _check(self, model: nn.Module, where: str) -> None:
        x = torch.zeros(2, self.dataset.in_chans, self.dataset.size, self.dataset.size)
        with torch.no_grad():
            out = model.eval()(x)
        if out.shape != (2, self.dataset.num_classes):
            raise UserError(f"{where} gives {tuple(out.shape[1:])} outputs, the dataset has "
                            f"{self.dataset.num_classes} classes")

    def _load_or_train(self) -> nn.Module:
        model = build_teacher(self.cfg, self.dataset)
        if self.cfg.checkpoint:
            state = load_weights(self.cfg.checkpoint)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                detail = str(exc).strip().splitlines()
                raise UserError(
                    f"teacher checkpoint {self.cfg.checkpoint} does not fit "
                    f"proxy.teacher.model={self.cfg.model} with {self.dataset.num_classes} "
                    f"classes and {self.dataset.in_chans} input channel(s) "
                    f"({detail[1].strip() if len(detail) > 1 else detail[0]}); set "
                    "proxy.teacher.model to the checkpoint's architecture") from None
            self._check(model, f"teacher checkpoint {self.cfg.checkpoint}")
            if not (self.dir / "meta.json").is_file():
                self._write_meta(model, 0.0, source=str(self.cfg.checkpoint))
            return model.eval()
        weights = self.dir / "model.safetensors"
        if weights.is_file() and (self.dir / "meta.json").is_file():
            model.load_state_dict(load_file(str(weights)))
            return model.eval()
        return self._train(model)

    def _train(self, model: nn.Module) -> nn.Module:
        ds = self.dataset
        train_idx, _ = ds.split(self.val_images, self.seed)
        recipe = Recipe(epochs=self.epochs, batch=self.cfg.batch, lr=self.cfg.lr, alpha=0.0,
                        hflip=True)
        torch.manual_seed(self.seed)
        trainer = Trainer(model, ds.train_x[train_idx], ds.train_y[train_idx], None, recipe,
                          seed=self.seed)
        start = time.time()
        with tqdm(total=trainer.total_steps, desc=f"teacher {self.cfg.model} (once, cached)",
                  unit="step", leave=False) as bar:
            trainer.run(on_step=lambda _: bar.update())
        seconds = time.time() - start
        with atomic_path(self.dir / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        self._write_meta(model, seconds, source="trained")
        return model.eval()

    def _write_meta(self, model: nn.Module, seconds: float, source: str) -> None:
        ds = self.dataset
        _, val_idx = ds.split(self.val_images, self.seed)
        meta = {
            "model": self.cfg.model, "source": source, "recipe": self.recipe,
            "train_seconds": round(seconds, 1),
            "val_accuracy": accuracy(predict_logits(model, ds.train_x[val_idx]),
                                     ds.train_y[val_idx]),
            "test_accuracy": accuracy(predict_logits(model, ds.test_x), ds.test_y),
        }
        write_text(self.dir / "meta.json", json.dumps(meta, indent=1))

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """Teacher logits (float16) for the given training images, cached on disk."""
        digest = hashlib.sha256(indices.numpy().tobytes()).hexdigest()[:16]
        path = self.dir / f"logits-{digest}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["logits"]
            except (SafetensorError, KeyError, OSError):
                pass  # unreadable cache: recompute and replace it
        out = predict_logits(self.model(), self.dataset.train_x[indices], batch=500).half()
        with atomic_path(path) as tmp:
            save_file({"logits": out.contiguous()}, str(tmp))
        return out
