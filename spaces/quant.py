"""Per-layer fake quantization, so training and evaluation see each layer's bit-width.

- 8, 6 and 4 bits: weights quantized symmetric per output channel, the layer's input
  activations asymmetric per tensor (the scheme of onnxruntime's static QDQ with uint8
  activations), both with a straight-through estimator. Only 8 bits runs as real int8 at
  export; 6 and 4 bits are simulated.
- 16 bits: weights and inputs rounded to float16.
- 32 bits: untouched.

``attach_fake_quant`` adds forward pre-hooks and weight parametrizations; ``detach_fake_quant``
removes them and leaves the float weights, ready for export; ``clean_dead_channels`` then makes
channels that training left constant safe to fold and quantize.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from spaces.arch import Arch
from spaces.build import EdgeNet, layer_modules

__all__ = ["ActFakeQuant", "attach_fake_quant", "clean_dead_channels", "detach_fake_quant",
           "fake_quantize", "WeightFakeQuant"]


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x + (q - x).detach()


class WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel weight quantization (float16 rounding at 16 bits)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == 16:
            return _ste(w, w.half().float())
        qmax = 2 ** (self.bits - 1) - 1
        scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
        scale = scale.view(-1, *([1] * (w.dim() - 1)))
        return _ste(w, torch.round(w / scale).clamp(-qmax, qmax) * scale)


class ActFakeQuant(nn.Module):
    """Asymmetric per-tensor activation quantization with an EMA of the observed range."""

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 16:
            return _ste(x, x.half().float())
        if self.training or not bool(self.seen):
            lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
            if bool(self.seen):
                lo = torch.lerp(self.lo, lo, self.momentum)
                hi = torch.lerp(self.hi, hi, self.momentum)
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        levels = 2 ** self.bits - 1
        scale = ((self.hi - self.lo) / levels).clamp_min(1e-8)
        zero = torch.round(-self.lo / scale)
        q = (torch.round(x / scale) + zero).clamp(0, levels)
        return _ste(x, (q - zero) * scale)


def _quantizable(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def attach_fake_quant(model: EdgeNet, arch: Arch) -> EdgeNet:
    """Fake-quantize every layer below 32 bits, in place; returns the model."""
    bits = {layer.name: layer.bits for layer in arch.layers()}
    for name, module in layer_modules(model, arch).items():
        if bits[name] < 32:
            fake_quantize(module, bits[name])
    return model


def fake_quantize(module: nn.Module, bits: int) -> nn.Module:
    """Fake-quantize every convolution and linear layer inside ``module`` (any torch model,
    not only this space's) at ``bits``, in place; returns the module."""
    for op in _quantizable(module):
        parametrize.register_parametrization(op, "weight", WeightFakeQuant(bits))
        op.act_fake_quant = ActFakeQuant(bits)
        op._fq_hook = op.register_forward_pre_hook(
            lambda mod, args: (mod.act_fake_quant(args[0]),) + tuple(args[1:]))
    return module


def detach_fake_quant(model: nn.Module) -> nn.Module:
    """Remove fake quantization, keeping the trained float weights; returns the model."""
    for op in list(model.modules()):
        if parametrize.is_parametrized(op, "weight"):
            parametrize.remove_parametrizations(op, "weight", leave_parametrized=False)
        if hasattr(op, "_fq_hook"):
            op._fq_hook.remove()
            del op._fq_hook
            del op.act_fake_quant
    return model


def clean_dead_channels(model: nn.Module, example: torch.Tensor, rel_var: float = 1e-6) -> int:
    """Rewrite the convolution channels whose batch norm saw (almost) no variance as the
    constant they output, in place; returns how many channels were rewritten.

    Training can leave a channel constant (a dead input, a filter decayed to zero): its batch
    norm's running variance falls far below ``eps`` and folding the norm into the convolution
    (ONNX export) multiplies the filter by up to ``gamma / sqrt(eps)``. Int8 quantization then
    gives that channel a huge weight scale, and the bias, quantized at input scale x weight
    scale, loses the very constant the channel carries: one such channel took MnasNet-Small
    from 84% to 13% in int8. Where ``running_var < rel_var * eps`` the batch norm's output is
    ``beta`` to within ``gamma * sqrt(rel_var)``; the filter (and bias) of that channel is set
    to zero and its running mean to zero, so the float model computes ``beta`` exactly and the
    folded filter is zero. Convolution/batch-norm pairs are found by running ``example``
    (e.g. one image) through the model, so any torch model works, not only this space's.
    """
    produced: dict[int, nn.Conv2d] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(mod: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        produced[id(out)] = mod

    def before_bn(mod: nn.Module, args: tuple) -> None:
        conv = produced.get(id(args[0]))
        if conv is not None:
            pairs.append((conv, mod))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules()
              if isinstance(m, nn.BatchNorm2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    cleaned = 0
    with torch.no_grad():
        for conv, bn in pairs:
            if bn.running_var is None or conv.out_channels != bn.num_features:
                continue
            dead = bn.running_var < rel_var * bn.eps
            if not bool(dead.any()):
                continue
            conv.weight[dead] = 0.0
            if conv.bias is not None:
                conv.bias[dead] = 0.0
            bn.running_mean[dead] = 0.0
            bn.running_var[dead] = 1.0
            cleaned += int(dead.sum())
    return cleaned
