"""Build an :class:`Arch` as a torch model through timm's EfficientNet builder.

This is the only module that imports timm internals. Two of timm's habits are walled off here:
channel rounding (identity ``round_chs_fn``, and ``make_divisible`` replaced while building so
pruned expanded widths stay exact) and shared block-argument dicts (fresh ones on every build).
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import _efficientnet_blocks as timm_blocks
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch import nn

from spaces.arch import STEM_KERNEL, Arch

__all__ = ["arch_def", "as_trained", "build_model", "built_channels", "EdgeNet", "layer_modules",
           "onnx_scopes", "resize_scale"]

_ACT_FLAG = {"relu": "nre", "hswish": "nhs"}
_BUILD_LOCK = threading.Lock()


def arch_def(arch: Arch, pruned: bool = True) -> list[list[str]]:
    """timm's block-string ``arch_def`` of the architecture, one block per string.

    The expansion of an "ir" block is written as the exact ratio ``mid_chs / in_chs`` so that
    pruned expanded widths are reproduced exactly (with identity channel rounding).
    """
    layers = [layer for layer in arch.layers(pruned) if layer.kind in ("ds", "ir")]
    out: list[list[str]] = []
    it = iter(layers)
    for stage in arch.stages:
        strings = []
        for b in range(stage.depth):
            layer = next(it)
            parts = [layer.kind, "r1", f"k{layer.kernel}", f"s{layer.stride}"]
            if layer.kind == "ir":
                parts.append(f"e{layer.mid_chs / layer.in_chs!r}")
            parts.append(f"c{layer.out_chs}")
            if stage.se_ratio > 0:
                parts.append(f"se{stage.se_ratio!r}")
            parts.append(_ACT_FLAG[stage.act])
            if b == 0:
                parts.append("noskip")  # a stage's first block never adds its input
            strings.append("_".join(parts))
        out.append(strings)
    return out


@contextmanager
def _exact_widths() -> Iterator[None]:
    """Make timm's blocks use the expanded width they are given, unrounded."""
    with _BUILD_LOCK:
        original = timm_blocks.make_divisible
        timm_blocks.make_divisible = lambda v, *args, **kwargs: int(round(v))
        try:
            yield
        finally:
            timm_blocks.make_divisible = original


def resize_scale(size: int, target: int) -> float:
    """A scale factor whose float32 and float64 values both give ``floor(size * s) == target``.

    onnxruntime computes Resize's output size from a float32 scale, torch from a float64 one.
    """
    s = np.float32(target / size)
    for _ in range(8):
        if math.floor(size * float(s)) >= target:
            break
        s = np.nextafter(s, np.float32(np.inf))
    if math.floor(size * float(s)) != target:
        raise ValueError(f"no float32 scale resizes {size} to exactly {target}")
    return float(s)


class EdgeNet(nn.Module):
    """Resize and normalize inside the graph, then the timm network.

    Input: float32 images in [0, 1], NCHW, at the dataset's own size and channels.
    """

    def __init__(self, arch: Arch, pruned: bool = True) -> None:
        super().__init__()
        self.resolution = arch.resolution
        self.input_size = arch.input_size
        with _exact_widths():
            self.net = EfficientNet(
                decode_arch_def(arch_def(arch, pruned)),  # fresh dicts on every build
                num_classes=arch.num_classes,
                num_features=arch.head_chs,
                in_chans=arch.in_chans,
                stem_size=arch.stem_chs,
                stem_kernel_size=STEM_KERNEL,
                round_chs_fn=lambda chs: chs,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, input_size, input_size) in [0, 1]
        if self.resolution != self.input_size:
            # A constant scale (not a size) keeps the ONNX graph's shapes static.
            x = F.interpolate(x, scale_factor=resize_scale(self.input_size, self.resolution),
                              mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)
        x = (x - 0.5) / 0.5
        return self.net(x)  # (N, num_classes)


def build_model(arch: Arch, pruned: bool = True) -> EdgeNet:
    """A freshly initialised torch model of the architecture (pruned or dense widths)."""
    return EdgeNet(arch, pruned)


def as_trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give a freshly built model the distinct, non-zero biases and statistics of a trained
    one (in place; returns it), for exports that are timed but never trained.

    A fresh model's folded batch-norm biases and timm's zero-initialised convolution biases are
    all zeros. The ONNX exporter merges equal initializers into one shared tensor, and
    onnxruntime's quantizer then leaves every convolution reading a shared bias in float
    (weights dequantized at run time, no QLinearConv fusion): such networks ran a median 1.8
    times (up to 6.6 times) slower than the same networks exported as trained ones are.
    Random values (seeded) make every bias distinct, as training does.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(t.shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                    module.running_mean is not None:
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(uniform(module.running_var, 0.5, 2.0))
                if module.affine:
                    module.weight.copy_(uniform(module.weight, 0.5, 1.5))
                    module.bias.copy_(0.1 * torch.randn(module.num_features, generator=gen))
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=gen))
    return model


def layer_modules(model: EdgeNet, arch: Arch) -> dict[str, nn.Module]:
    """Map each layer name of ``arch.layers()`` to the module that implements it."""
    net = model.net
    out: dict[str, nn.Module] = {"stem": nn.ModuleList([net.conv_stem, net.bn1])}
    for s, stage in enumerate(arch.stages):
        for b in range(stage.depth):
            out[f"s{s}.b{b}"] = net.blocks[s][b]
    out["head"] = nn.ModuleList([net.conv_head, net.bn2])
    out["classifier"] = net.classifier
    return out


def built_channels(model: EdgeNet) -> list[tuple[int, int, int, int]]:
    """(in, mid, out, se) channels of every block as built, read back from the modules."""
    rows = []
    for stage in model.net.blocks:
        for block in stage:
            if isinstance(block, timm_blocks.InvertedResidual):
                cin, mid, cout = (block.conv_pw.in_channels, block.conv_pw.out_channels,
                                  block.conv_pwl.out_channels)
            else:
                cin = mid = block.conv_dw.in_channels
                cout = block.conv_pw.out_channels
            se = block.se.conv_reduce.out_channels if hasattr(block.se, "conv_reduce") else 0
            rows.append((cin, mid, cout, se))
    return rows


def onnx_scopes(arch: Arch) -> dict[str, tuple[str, ...]]:
    """ONNX node-name prefixes (TorchScript exporter scopes) of each layer's nodes."""
    out = {"stem": ("/net/conv_stem/", "/net/bn1/")}
    for s, stage in enumerate(arch.stages):
        for b in range(stage.depth):
            out[f"s{s}.b{b}"] = (f"/net/blocks/blocks.{s}/blocks.{s}.{b}/",)
    out["head"] = ("/net/conv_head/", "/net/bn2/")
    out["classifier"] = ("/net/classifier/",)
    return out
