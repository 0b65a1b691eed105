"""Hand-designed edge models to compare the search's results with.

Each baseline is built from scratch (no pretrained weights), adapted to the dataset the same
way for all: its input channels and classes are the dataset's, its first convolution keeps the
full resolution (stride 1 instead of 2, since 28x28 images are 8 times smaller than the 224x224
the models were designed for; without it MobileNetV3 ends at 1x1 after its fourth stage), and
normalization sits inside the graph as in the found models (float32 images in [0, 1]).

Training is the found models' final training (:func:`search.export.final_recipe`: the same
epochs, batch, learning rate, distillation from the same cached teacher on the same split, the
same seed). A baseline is trained as the search trains an unpruned architecture whose layers
are all at 8 bits: fake quantization on every convolution and linear layer throughout, so its
int8 file (onnxruntime static QDQ of every node it can quantize, the same settings and
calibration images as the found models) is the model it was trained to be. The fp32 file holds
the same weights in float. Before export, channels that training left constant are rewritten as
that constant (:func:`spaces.quant.clean_dead_channels`, as for the found models): folding their
batch norms otherwise blows their filters up and int8 loses them (MnasNet-Small fell from 84% to
13% in int8, MobileNetV2 0.5 from 83% to 75%, before this).

SqueezeNet 1.1 has no batch norm: with this recipe (learning rate 0.05, distillation) its
ReLUs die within the first 25 steps and it stays at chance accuracy (a warm-up, removing its
final ReLU or a learning rate of 0.01 do not change that within 100 steps). Its recipe is the
others' with one change (:data:`RECIPE_CHANGES`): gradients clipped to a global norm of 1, as
networks without normalization are commonly trained; the other baselines' gradient norms stay
above 1, so clipping them would slow them. A baseline's recipe changes are part of its
training fingerprint and recorded in its ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from search.config import BASELINES, Config
from search.data import Dataset, to_float
from search.errors import UserError
from search.teacher import TeacherCache
from search.train import Recipe, Trainer
from spaces.files import atomic_dir
from spaces.onnx_io import export_module, quantize_qdq
from spaces.quant import clean_dead_channels, detach_fake_quant, fake_quantize

__all__ = ["baseline_fingerprint", "baseline_recipe", "BaselineNet", "build_baseline",
           "export_baseline", "RECIPE_CHANGES", "train_baseline", "write_baseline"]

# Where a baseline's training differs from the export recipe, and why (see the module's notes).
RECIPE_CHANGES: dict[str, dict] = {
    "squeezenet1_1": {"clip_grad": 1.0},  # no batch norm: unclipped, its ReLUs die
}


def baseline_recipe(name: str, recipe: Recipe) -> Recipe:
    """The export recipe with baseline ``name``'s changes (:data:`RECIPE_CHANGES`)."""
    return replace(recipe, **RECIPE_CHANGES.get(name, {}))


def baseline_fingerprint(fingerprint: str, name: str) -> str:
    """Baseline ``name``'s training fingerprint: the export recipe's ``fingerprint``, with its
    recipe changes where it has some (so a change retrains that baseline only)."""
    changes = RECIPE_CHANGES.get(name)
    if not changes:
        return fingerprint
    import hashlib

    text = json.dumps({"recipe": fingerprint, "changes": changes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BaselineNet(nn.Module):
    """Normalize inside the graph, then the hand-designed network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W) in [0, 1], the dataset's own size
        return self.net((x - 0.5) / 0.5)  # (N, num_classes)


def build_baseline(name: str, in_chans: int, num_classes: int) -> BaselineNet:
    """A freshly initialised baseline adapted to the dataset (see the module's notes)."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if BASELINES[name][0] == "torchvision":
        import torchvision

        net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        first = net.features[0]
        net.features[0] = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, stride=1,
                                    padding=first.padding)
    else:
        import timm

        net = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                in_chans=in_chans)
        net.conv_stem.stride = (1, 1)
    return BaselineNet(net)


def train_baseline(name: str, in_chans: int, num_classes: int, x: torch.Tensor,
                   y: torch.Tensor, teacher: Optional[torch.Tensor], recipe: Recipe,
                   seed: int = 0, on_step: Optional[Callable[[int], None]] = None) -> nn.Module:
    """Baseline ``name`` trained with ``recipe`` (and its changes) where ``x`` is (a GPU if the
    caller put the tensors there), fake quantization at 8 bits throughout, then removed:
    returns the float model on the CPU in eval mode, ready to export."""
    torch.manual_seed(seed)
    model = fake_quantize(build_baseline(name, in_chans, num_classes), 8)
    trainer = Trainer(model.to(x.device), x, y, teacher, baseline_recipe(name, recipe),
                      seed=seed)
    trainer.run(on_step=on_step)
    return detach_fake_quant(trainer.model.cpu()).eval()


def export_baseline(cfg: Config, name: str, dataset: Dataset, teacher: TeacherCache,
                    out_root: Path) -> dict:
    """Train baseline ``name`` with the final recipe and write ``out_root/NAME/``
    (:func:`write_baseline`); returns its metrics."""
    from search.export import final_recipe

    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    recipe = final_recipe(cfg)
    device = cfg.search.torch_device()
    soft = teacher.logits(train_idx).to(device)
    start = time.time()
    with tqdm(total=recipe.total_steps(len(train_idx)), desc=f"{name}: final training",
              unit="step", leave=False) as bar:
        model = train_baseline(name, dataset.in_chans, dataset.num_classes,
                               dataset.train_x[train_idx].to(device),
                               dataset.train_y[train_idx].to(device), soft, recipe,
                               seed=cfg.seed, on_step=lambda _: bar.update())
    return write_baseline(cfg, name, model, dataset, teacher, out_root, time.time() - start,
                          device)


def write_baseline(cfg: Config, name: str, model: nn.Module, dataset: Dataset,
                   teacher: TeacherCache, out_root: Path, train_s: float, device: str) -> dict:
    """Write ``out_root/NAME/`` (model.onnx, model.int8.onnx, weights.safetensors,
    metrics.json) from ``model``, the float model :func:`train_baseline` trained with this
    config's recipe (``train_s`` seconds on ``device``), atomically; returns its metrics."""
    # Imported here: the training above runs where only torch, timm and omegaconf are (a GPU
    # machine, scripts/report_training.py), the export needs the whole tool.
    from search.export import RECIPE_WORDS, calibration_images, check_fp32, training_record

    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    dead = clean_dead_channels(model, to_float(dataset.test_x[:1]))

    with atomic_dir(out_root / name) as work:
        fp32_path, int8_path = work / "model.onnx", work / "model.int8.onnx"
        export_module(model, (dataset.in_chans, dataset.size, dataset.size), fp32_path,
                      doc=f"baseline {name}")
        diff = check_fp32(model, fp32_path, dataset, f"baseline {name}")
        quantize_qdq(fp32_path, int8_path, calibration_images(cfg, dataset, train_idx))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(work / "weights.safetensors"))
        metrics = {
            "baseline": name, "source": BASELINES[name][0], "description": BASELINES[name][1],
            "params": sum(p.numel() for p in model.parameters()),
            "onnx_fp32_max_abs_diff": diff, "dead_channels_cleaned": dead,
            "adaptation": "built from scratch; input channels and classes of the dataset; "
                          "first convolution at stride 1; normalization inside the graph",
            "training": training_record(cfg, teacher, train_s, device, RECIPE_WORDS + " (a "
                                        "baseline: unpruned, every layer at 8 bits)"),
        }
        training = metrics["training"]
        training["fingerprint"] = baseline_fingerprint(training["fingerprint"], name)
        if name in RECIPE_CHANGES:
            training["recipe_changes"] = RECIPE_CHANGES[name]
        (work / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
