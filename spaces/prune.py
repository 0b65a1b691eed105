"""Structured pruning: physically remove the least important channels of each stage.

A stage's pruning ratio removes that share of its output channels (one channel group shared by
every block of the stage, since residual additions tie them) and of each block's expanded
width. Squeeze-excitation widths follow timm's rule from the pruned widths. Importance is the
L1 norm of the weights that produce a channel (summed over every producer of a shared group).

The pruned model is built from the pruned architecture, so its shapes are exactly those of
``arch.layers(pruned=True)``; the dense model's weights are copied into it by index.
"""

from __future__ import annotations

import torch
from torch import nn

from spaces.arch import Arch
from spaces.build import EdgeNet, build_model

__all__ = ["Index", "prune_model"]

Index = torch.Tensor | None  # None: keep every channel


def _l1(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter."""
    return weight.detach().abs().flatten(1).sum(1)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in channel order."""
    return torch.sort(torch.topk(scores, keep).indices).values


def _take(t: torch.Tensor, out_idx: Index, in_idx: Index = None) -> torch.Tensor:
    if out_idx is not None:
        t = t.index_select(0, out_idx)
    if in_idx is not None:
        t = t.index_select(1, in_idx)
    return t


def _copy_norm(dst: nn.Module, src: nn.Module, idx: Index) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data.copy_(_take(getattr(src, name), idx))
    dst.num_batches_tracked.data.copy_(src.num_batches_tracked)


def _copy_conv(dst: nn.Conv2d | nn.Linear, src: nn.Module, out_idx: Index, in_idx: Index,
               depthwise: bool = False) -> None:
    w = _take(src.weight, out_idx, None if depthwise else in_idx)
    dst.weight.data.copy_(w)
    if src.bias is not None:
        dst.bias.data.copy_(_take(src.bias, out_idx))


def _copy_se(dst: nn.Module, src: nn.Module, chs_idx: Index, keep_rd: int) -> None:
    if not hasattr(src, "conv_reduce"):
        return
    rd_idx = _top(_l1(src.conv_reduce.weight), keep_rd)
    _copy_conv(dst.conv_reduce, src.conv_reduce, rd_idx, chs_idx)
    _copy_conv(dst.conv_expand, src.conv_expand, chs_idx, rd_idx)


@torch.no_grad()
def prune_model(dense: EdgeNet, arch: Arch) -> EdgeNet:
    """Return a new model with ``arch``'s pruned widths and ``dense``'s most important weights.

    Args:
        dense: a (trained) model built with ``build_model(arch, pruned=False)``.
        arch: the architecture, whose stages carry the pruning ratios.
    """
    pruned = build_model(arch, pruned=True)
    src, dst = dense.net, pruned.net
    for name in ("conv_stem", "bn1", "classifier"):
        getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
    layers = [layer for layer in arch.layers(pruned=True) if layer.kind in ("ds", "ir")]
    it = iter(layers)
    in_idx: Index = None  # the stem is never pruned
    for s, stage in enumerate(arch.stages):
        blocks_src, blocks_dst = src.blocks[s], dst.blocks[s]
        # One output group per stage: every block's projection writes to it.
        producers = [b.conv_pwl if stage.block == "ir" else b.conv_pw for b in blocks_src]
        scores = sum(_l1(p.weight) for p in producers)
        out_idx = _top(scores, stage.kept_out_chs) if stage.prune_ratio > 0 else None
        for bs, bd in zip(blocks_src, blocks_dst):
            layer = next(it)
            if stage.block == "ds":
                _copy_conv(bd.conv_dw, bs.conv_dw, in_idx, None, depthwise=True)
                _copy_norm(bd.bn1, bs.bn1, in_idx)
                _copy_se(bd.se, bs.se, in_idx, layer.rd_chs)
                _copy_conv(bd.conv_pw, bs.conv_pw, out_idx, in_idx)
                _copy_norm(bd.bn2, bs.bn2, out_idx)
            else:
                mid_idx = (_top(_l1(bs.conv_pw.weight), layer.mid_chs)
                           if layer.mid_chs < bs.conv_pw.out_channels else None)
                _copy_conv(bd.conv_pw, bs.conv_pw, mid_idx, in_idx)
                _copy_norm(bd.bn1, bs.bn1, mid_idx)
                _copy_conv(bd.conv_dw, bs.conv_dw, mid_idx, None, depthwise=True)
                _copy_norm(bd.bn2, bs.bn2, mid_idx)
                _copy_se(bd.se, bs.se, mid_idx, layer.rd_chs)
                _copy_conv(bd.conv_pwl, bs.conv_pwl, out_idx, mid_idx)
                _copy_norm(bd.bn3, bs.bn3, out_idx)
            in_idx = out_idx
    _copy_conv(dst.conv_head, src.conv_head, None, in_idx)
    _copy_norm(dst.bn2, src.bn2, None)
    pruned.train(dense.training)
    return pruned
