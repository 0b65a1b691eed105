"""A built architecture as a network to fine-tune within a memory budget (TinyTL's idea).

:class:`LeanNet` is an :class:`~spaces.build.EdgeNet` with its batch norms folded into the
convolutions (frozen statistics: what a device fine-tunes on a few images) and autograd told
to keep only what the backward pass needs:

- a convolution whose weight is frozen keeps nothing of its input (its input's gradient
  needs the weight only, its bias's gradient the output's gradient only); torch's own
  convolution keeps the input whether or not the weight trains;
- a ReLU keeps a one-byte mask of where its input was positive, not a float tensor.

Everything else is torch's (hard-swish keeps its input, the sigmoid gate its output, the
squeeze-excitation product its operands where their gradients are needed, a linear layer its
input). :func:`latency_models.train_memory.train_memory_kib` prices exactly this network.

Update schemes: :mod:`spaces.schemes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spaces.arch import Arch
from spaces.build import EdgeNet, build_model, resize_scale
from spaces.schemes import Scheme

__all__ = ["FrozenConv", "LeanNet", "MaskReLU"]

class FrozenConv(torch.autograd.Function):
    """A convolution with a frozen weight that keeps nothing of its input for backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):  # noqa: D102
        ctx.weight, ctx.conf = weight, (x.shape, x.dtype, stride, padding, groups)
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        shape, dtype, stride, padding, groups = ctx.conf
        # the input's values are not needed, only its shape: a zero-stride stand-in
        stand_in = torch.empty((), dtype=dtype, device=grad.device).expand(shape)
        mask = [ctx.needs_input_grad[0], False, ctx.needs_input_grad[2]]
        gx, _, gb = torch.ops.aten.convolution_backward(
            grad, stand_in, ctx.weight, [ctx.weight.shape[0]], stride, padding, [1, 1], False,
            [0, 0], groups, mask)
        return gx, None, gb, None, None, None


class MaskReLU(torch.autograd.Function):
    """ReLU that keeps a one-byte mask for backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        mask = x > 0
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad * mask


class _Conv(nn.Module):
    """A convolution with its batch norm folded in (weight, bias)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None) -> None:
        super().__init__()
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
        if bn is not None:  # y = (conv(x) + b - mean) * gamma / sqrt(var + eps) + beta
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = w * scale.view(-1, 1, 1, 1)
            b = (b - bn.running_mean) * scale + bn.bias.detach()
        self.weight, self.bias = nn.Parameter(w), nn.Parameter(b)
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or not (x.requires_grad or self.bias.requires_grad):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1,
                            self.groups)
        return FrozenConv.apply(x, self.weight, self.bias, self.stride, self.padding,
                                 self.groups)


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return MaskReLU.apply(x) if x.requires_grad else F.relu(x)
    return F.hardswish(x)


class _Block(nn.Module):
    def __init__(self, block: nn.Module, act: str, skip: bool) -> None:
        super().__init__()
        self.act, self.skip = act, skip
        self.ir = hasattr(block, "conv_pwl")
        if self.ir:
            self.pw = _Conv(block.conv_pw, block.bn1)
            self.dw = _Conv(block.conv_dw, block.bn2)
            self.proj = _Conv(block.conv_pwl, block.bn3)
        else:
            self.dw = _Conv(block.conv_dw, block.bn1)
            self.proj = _Conv(block.conv_pw, block.bn2)
        se = block.se
        self.se = hasattr(se, "conv_reduce")
        if self.se:
            self.reduce, self.expand = _Conv(se.conv_reduce, None), _Conv(se.conv_expand, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run([x])

    def run(self, box: list[torch.Tensor]) -> torch.Tensor:
        """The block on ``box``'s one tensor, which it takes out of the list (so that the
        caller holds no reference to the input once the block no longer needs it)."""
        # One op per statement: a tensor is freed as soon as its last consumer has run
        # (``x = act(conv(x))`` would keep the conv's input alive through the activation).
        x = box.pop()
        shortcut = x if self.skip else None
        if self.ir:
            x = self.pw(x)
            x = _act(self.act, x)
        x = self.dw(x)
        x = _act(self.act, x)
        if self.se:
            g = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
            g = self.reduce(g)
            g = _act(self.act, g)
            g = self.expand(g)
            g = torch.sigmoid(g)
            x = x * g
            del g
        x = self.proj(x)
        return x if shortcut is None else x + shortcut


class LeanNet(nn.Module):
    """The network of :class:`EdgeNet`, batch norms folded, for memory-lean fine-tuning.

    ``blocks`` is flat, in layer order; :meth:`set_scheme` freezes all but what a scheme
    trains; :meth:`to_edgenet` writes the weights back into an :class:`EdgeNet` (its batch
    norms set to the identity), ready for the usual export.
    """

    def __init__(self, model: EdgeNet, arch: Arch) -> None:
        super().__init__()
        net = model.net
        self.arch = arch
        self.resolution, self.input_size = arch.resolution, arch.input_size
        self.stem = _Conv(net.conv_stem, net.bn1)
        modules = [blk for stage in net.blocks for blk in stage]
        layers = [layer for layer in arch.layers() if layer.kind in ("ds", "ir")]
        self.blocks = nn.ModuleList(_Block(m, layer.act, layer.skip)
                                    for m, layer in zip(modules, layers))
        self.head = _Conv(net.conv_head, net.bn2)
        self.classifier = nn.Linear(net.classifier.in_features, net.classifier.out_features)
        self.classifier.load_state_dict(net.classifier.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, input_size, input_size) in [0, 1]
        with torch.no_grad():
            if self.resolution != self.input_size:
                x = F.interpolate(x, scale_factor=resize_scale(self.input_size,
                                                               self.resolution),
                                  mode="bilinear", align_corners=False,
                                  recompute_scale_factor=False)
            x = x - 0.5
            x = x / 0.5
        x = self.stem(x)
        x = _act("relu", x)
        for block in self.blocks:
            box = [x]
            del x
            x = block.run(box)
        x = self.head(x)
        x = _act("relu", x)
        x = x.mean((2, 3))  # (N, head_chs)
        return self.classifier(x)  # (N, num_classes)

    def set_scheme(self, scheme: Scheme) -> list[nn.Parameter]:
        """Freeze everything but what ``scheme`` trains; returns the trainable parameters."""
        for p in self.parameters():
            p.requires_grad_(False)
        train = list(self.classifier.parameters())
        if scheme.kind == "bias":
            train += [m.bias for m in self.modules() if isinstance(m, _Conv)]
        elif scheme.kind == "last":
            train += list(self.head.parameters())
            for block in self.blocks[len(self.blocks) - scheme.k:]:
                train += list(block.parameters())
        elif scheme.kind == "all":
            train = list(self.parameters())
        for p in train:
            p.requires_grad_(True)
        return train

    def to_edgenet(self) -> EdgeNet:
        """An :class:`EdgeNet` of the same architecture holding these weights."""
        model = build_model(self.arch).eval()
        net = model.net
        pairs = [(self.stem, net.conv_stem, net.bn1), (self.head, net.conv_head, net.bn2)]
        modules = [blk for stage in net.blocks for blk in stage]
        for lean, blk in zip(self.blocks, modules):
            if lean.ir:
                pairs += [(lean.pw, blk.conv_pw, blk.bn1), (lean.dw, blk.conv_dw, blk.bn2),
                          (lean.proj, blk.conv_pwl, blk.bn3)]
            else:
                pairs += [(lean.dw, blk.conv_dw, blk.bn1), (lean.proj, blk.conv_pw, blk.bn2)]
            if lean.se:
                pairs += [(lean.reduce, blk.se.conv_reduce, None),
                          (lean.expand, blk.se.conv_expand, None)]
        with torch.no_grad():
            for lean, conv, bn in pairs:
                conv.weight.copy_(lean.weight)
                if bn is None:
                    conv.bias.copy_(lean.bias)
                    continue
                # the identity norm: (x - 0) * 1 / sqrt((1 - eps) + eps) + bias
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
                bn.bias.copy_(lean.bias)
            net.classifier.load_state_dict(self.classifier.state_dict())
        return model
