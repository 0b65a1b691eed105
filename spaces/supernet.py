"""A weight-sharing supernet of a search space: one set of weights that holds every
architecture of the space (Once-for-All's idea, with APQ's pruning and bit-widths inside).

The supernet keeps two networks at the space's largest choices, built by the same builder as
any architecture (:func:`spaces.build.build_model`): one whose stages are inverted-residual
blocks, one whose stages are depthwise-separable blocks (its stem, head and classifier unused).
An architecture's sub-network is the architecture's own model (the same timm modules as its
export) run with weights *sliced* from the supernet's:

- a width (a stage's output, an expanded width, the stem, the head, squeeze-excitation) is
  the first channels of the largest; channels are kept in order of importance
  (:meth:`SuperNet.sort_channels`, the L1 norm pruning ranks them by), so a pruned
  sub-network keeps the most important channels, as :func:`spaces.prune.prune_model` does;
- a kernel is the centre of the largest kernel;
- a depth is the first blocks of a stage;
- a bit-width fake-quantizes the sliced weights and the layer's input activations
  (:mod:`spaces.quant`'s scheme).

Slices are views of the supernet's parameters, so training a sub-network
(:func:`torch.func.functional_call`) trains the shared weights. Batch-norm statistics are
never shared: each run gets fresh or copied buffers, and a sub-network is scored after its
statistics are recalibrated on a few training images (:meth:`SuperNet.recalibrate`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call

from spaces.arch import Arch, Stage
from spaces.build import EdgeNet, build_model
from spaces.quant import ActFakeQuant, WeightFakeQuant
from spaces.space import SpaceConfig, sample_arch

__all__ = ["extreme_arch", "largest_arch", "layer_prefixes", "shrinking_arch",
           "SHRINK_PHASES", "slice_like", "SuperNet", "SuperNetError"]

# Once-for-All's progressive shrinking, adapted to this space: after the largest alone, the
# dimensions that become elastic, phase by phase (each phase keeps the earlier ones elastic;
# the rest stay at their largest). Kernel and depth first, as Once-for-All does; then the
# widths; then what changes a block's kind or its numbers (block, squeeze-excitation,
# activation, resolution, bit-widths).
SHRINK_PHASES: tuple[tuple[str, ...], ...] = (
    ("kernel",), ("depth",), ("expansion", "out_chs", "prune_ratio", "stem_chs", "head_chs"),
    ("block", "se_ratio", "act", "resolution", "bits"))


class SuperNetError(ValueError):
    """An architecture the supernet does not hold, or weights that do not fit it."""


def largest_arch(space: SpaceConfig, block: str, *, in_chans: int, input_size: int,
                 num_classes: int) -> Arch:
    """The architecture with the space's largest choices, every stage of ``block`` kind (at
    32 bits, unpruned): the shape of the supernet's weights."""
    stages = tuple(Stage(
        block=block, kernel=max(space.kernel),
        expansion=max(space.expansion) if block == "ir" else 1,
        se_ratio=max(space.se_ratio), act="relu", depth=max(st.depth), stride=st.stride,
        out_chs=max(st.out_chs), prune_ratio=0.0, bits=(32,) * max(st.depth))
        for st in space.stages)
    return Arch(in_chans=in_chans, input_size=input_size, num_classes=num_classes,
                resolution=max(space.resolution), stem_chs=max(space.stem_chs), stem_bits=32,
                stages=stages, head_chs=max(space.head_chs), head_bits=32, classifier_bits=32)


class _Extreme:
    """Optuna's ``suggest_categorical`` answered with the largest (or smallest) choice."""

    def __init__(self, largest: bool) -> None:
        self.largest = largest

    def suggest_categorical(self, name: str, choices: list):
        if name.endswith("_block"):  # inverted residual: the larger block
            return ("ir" if "ir" in choices else choices[0]) if self.largest else (
                "ds" if "ds" in choices else choices[0])
        if name.endswith("prune_ratio"):
            return min(choices) if self.largest else max(choices)
        if name.endswith("act"):
            return choices[0]
        return max(choices) if self.largest else min(choices)


def extreme_arch(space: SpaceConfig, largest: bool, *, bits, in_chans: int, input_size: int,
                 num_classes: int) -> Arch:
    """The space's largest sub-network (every choice at its largest, unpruned, the widest
    bit-width) or its smallest (every choice at its smallest, the most pruned, the narrowest
    bit-width): the two ends of the sandwich rule."""
    return sample_arch(_Extreme(largest), space, bits=list(bits), in_chans=in_chans,
                       input_size=input_size, num_classes=num_classes)


class _Shrinking:
    """A choice of an elastic dimension answered by ``rng``, any other by the largest."""

    def __init__(self, rng, elastic: Iterable[str]) -> None:
        self.rng, self.elastic, self.largest = rng, set(elastic), _Extreme(True)

    def suggest_categorical(self, name: str, choices: list):
        dim = "bits" if name.endswith("bits") else re.sub(r"^s\d+_", "", name)  # s2_kernel
        source = self.rng if dim in self.elastic else self.largest
        return source.suggest_categorical(name, choices)


def shrinking_arch(rng, space: SpaceConfig, elastic: Iterable[str], *, bits, in_chans: int,
                   input_size: int, num_classes: int) -> Arch:
    """A sub-network sampled by ``rng`` (anything with ``suggest_categorical``) in the
    dimensions named in ``elastic`` (names of :data:`SHRINK_PHASES`), every other choice at
    its largest."""
    unknown = set(elastic) - {d for phase in SHRINK_PHASES for d in phase}
    if unknown:
        raise SuperNetError(f"unknown dimensions {sorted(unknown)}")
    return sample_arch(_Shrinking(rng, elastic), space, bits=list(bits), in_chans=in_chans,
                       input_size=input_size, num_classes=num_classes)


def slice_like(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The part of ``weight`` a smaller tensor of ``shape`` takes: the first entries of each
    channel dimension and the centre of each kernel dimension (a view: gradients reach
    ``weight``)."""
    if weight.dim() != len(shape):
        raise SuperNetError(f"a {tuple(shape)} tensor cannot be cut from a "
                            f"{tuple(weight.shape)} one")
    index = []
    for d, (big, small) in enumerate(zip(weight.shape, shape)):
        if small > big:
            raise SuperNetError(f"a {tuple(shape)} tensor does not fit in a "
                                f"{tuple(weight.shape)} one")
        if d >= 2 and weight.dim() == 4:  # a kernel dimension: its centre
            start = (big - small) // 2
            index.append(slice(start, start + small))
        else:
            index.append(slice(0, small))
    return weight[tuple(index)]


def layer_prefixes(arch: Arch) -> dict[str, str]:
    """The state-dict prefix of each layer of ``arch.layers()``'s modules (their bit-width's
    scope): ``net.blocks.1.0.`` for ``s1.b0``."""
    out = {"net.conv_stem.": "stem", "net.bn1.": "stem", "net.conv_head.": "head",
           "net.bn2.": "head", "net.classifier.": "classifier"}
    for s, stage in enumerate(arch.stages):
        for b in range(stage.depth):
            out[f"net.blocks.{s}.{b}."] = f"s{s}.b{b}"
    return out


def _bits_by_prefix(arch: Arch) -> dict[str, int]:
    """Each layer's state-dict prefix (:func:`layer_prefixes`) with the layer's bit-width."""
    bits = {layer.name: layer.bits for layer in arch.layers()}
    return {prefix: bits[layer] for prefix, layer in layer_prefixes(arch).items()}


def _bits_at(name: str, by_prefix: dict[str, int]) -> int:
    """The bit-width of the layer that the state entry (or module) ``name`` belongs to."""
    return next(b for prefix, b in by_prefix.items() if name.startswith(prefix))


def _quantizable(model: EdgeNet) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


class SuperNet(nn.Module):
    """Every architecture of ``space`` (for one dataset's channels, size and classes) in one
    set of weights.

    Args:
        space: the search space.
        in_chans, input_size, num_classes: the dataset's.
    """

    def __init__(self, space: SpaceConfig, *, in_chans: int, input_size: int,
                 num_classes: int) -> None:
        super().__init__()
        self.space = space
        self.shape = dict(in_chans=in_chans, input_size=input_size, num_classes=num_classes)
        self.ir = build_model(largest_arch(space, "ir", **self.shape), pruned=False)
        blocks = set().union(*(set(st.block) for st in space.stages))
        if "ds" in blocks:
            self.ds = build_model(largest_arch(space, "ds", **self.shape), pruned=False).net.blocks
        self._models: OrderedDict[str, EdgeNet] = OrderedDict()

    # ---- the sub-network of an architecture ----------------------------------------------
    def model_of(self, arch: Arch) -> EdgeNet:
        """The architecture's own model (structure only; its weights come from the
        supernet at each call), kept for the architectures seen last."""
        key = arch.arch_id
        model = self._models.get(key)
        if model is None:
            self._check(arch)
            model = build_model(arch).to(self.ir.net.conv_stem.weight.device)
            self._models[key] = model
            if len(self._models) > 64:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(key)
        return model

    def _check(self, arch: Arch) -> None:
        shape = dict(in_chans=arch.in_chans, input_size=arch.input_size,
                     num_classes=arch.num_classes)
        problems = [f"{k} {shape[k]} (the supernet's: {v})" for k, v in self.shape.items()
                    if shape[k] != v]
        if len(arch.stages) != len(self.space.stages):
            problems.append(f"{len(arch.stages)} stages (the space has "
                            f"{len(self.space.stages)})")
        for s, (st, choices) in enumerate(zip(arch.stages, self.space.stages)):
            if st.block == "ds" and not hasattr(self, "ds"):
                problems.append(f"stage {s} is depthwise-separable, the space has none")
            if st.stride != choices.stride:
                problems.append(f"stage {s} has stride {st.stride} (the space: "
                                f"{choices.stride})")
        if problems:
            raise SuperNetError("the supernet does not hold this architecture: "
                                + "; ".join(problems))

    def _source(self, name: str, arch: Arch) -> torch.Tensor:
        """The supernet tensor that the sub-network's state entry ``name`` is cut from."""
        parts = name.split(".")
        if parts[:2] == ["net", "blocks"] and arch.stages[int(parts[2])].block == "ds":
            tensor = self.ds.get_submodule(".".join(parts[2:-1]))
        else:
            tensor = self.ir.get_submodule(".".join(parts[:-1]))
        return getattr(tensor, parts[-1])

    def weights(self, arch: Arch, *, quantize: bool = True) -> dict[str, torch.Tensor]:
        """The sub-network's parameters and buffers, cut from the supernet's: parameters as
        views (fake-quantized at each layer's bits when ``quantize``), batch-norm buffers as
        copies (the supernet's are never written)."""
        model = self.model_of(arch)
        bits = _bits_by_prefix(arch)
        out = {}
        for name, mine in model.state_dict(keep_vars=True).items():
            part = slice_like(self._source(name, arch), mine.shape)
            if isinstance(mine, nn.Parameter):
                b = _bits_at(name, bits)
                if quantize and b < 32 and part.dim() >= 2:
                    part = WeightFakeQuant(b)(part)
                out[name] = part
            else:
                out[name] = part.detach().clone()
        return out

    def run(self, arch: Arch, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
            *, quantize: bool = True) -> torch.Tensor:
        """The sub-network's logits on ``x`` (``weights``: from :meth:`weights`, or cut now).
        In training mode its batch norm uses the batch's statistics; in evaluation mode the
        statistics in ``weights`` (see :meth:`recalibrate`)."""
        model = self.model_of(arch).train(self.training)
        weights = self.weights(arch, quantize=quantize) if weights is None else weights
        hooks = self._act_quant(model, arch) if quantize else []
        try:
            return functional_call(model, weights, (x,))
        finally:
            for h in hooks:
                h.remove()

    def _act_quant(self, model: EdgeNet, arch: Arch) -> list:
        """Fake-quantize the inputs of layers below 32 bits (a fresh range per call)."""
        bits = _bits_by_prefix(arch)
        hooks = []
        for name, module in _quantizable(model).items():
            b = _bits_at(f"{name}.", bits)
            if b < 32:
                quant = ActFakeQuant(b)
                hooks.append(module.register_forward_pre_hook(
                    lambda mod, args, q=quant: (q(args[0]),) + tuple(args[1:])))
        return hooks

    @torch.no_grad()
    def recalibrate(self, arch: Arch, batches: Iterable[torch.Tensor], *,
                    quantize: bool = True) -> dict[str, torch.Tensor]:
        """The sub-network's weights with batch-norm statistics measured on ``batches`` (a
        fixed set of training images): the cumulative average over them, as Once-for-All
        recalibrates. Returns the weights for :meth:`run` in evaluation mode."""
        model = self.model_of(arch)
        weights = self.weights(arch, quantize=quantize)
        for name, t in weights.items():
            if name.endswith("running_mean"):
                t.zero_()
            elif name.endswith("running_var"):
                t.fill_(1.0)
            elif name.endswith("num_batches_tracked"):
                t.zero_()
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        was = self.training
        try:
            for m in norms:
                m.momentum = None  # a cumulative average
            self.train(True)
            for x in batches:
                self.run(arch, x, weights, quantize=quantize)
        finally:
            for m, mom in zip(norms, saved):
                m.momentum = mom
            self.train(was)
        return weights

    def extract(self, arch: Arch, weights: dict[str, torch.Tensor] | None = None, *,
                pruned: bool = True) -> EdgeNet:
        """A standalone model of ``arch`` (the one :func:`spaces.build.build_model` builds)
        holding the supernet's float weights (or ``weights``, e.g. recalibrated ones): to
        export, or to start the export's training from. ``pruned=False``: the architecture
        at its dense widths (before its pruning ratios), cut from the supernet the same way,
        as the dense phase of :func:`search.proxy.train_candidate` starts from it."""
        self._check(arch)
        model = build_model(arch, pruned=pruned)
        if weights is None:
            weights = (self.weights(arch, quantize=False) if pruned else
                       {name: slice_like(self._source(name, arch), mine.shape)
                        for name, mine in model.state_dict().items()})
        model.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
        return model.to(self.ir.net.conv_stem.weight.device)

    # ---- importance order ----------------------------------------------------------------
    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder the expanded width of every inverted-residual block and every
        squeeze-excitation width so that their channels come in decreasing L1 importance (of
        the weights that produce them, the ranking :func:`spaces.prune.prune_model` uses): a
        sub-network's first channels, and so a pruned sub-network's, are then the most
        important ones. Once-for-All sorts the same widths. A stage's output channels (tied
        across its blocks, both block kinds and the next stage) keep their order. The
        function of every sub-network that uses a whole width is unchanged (a permutation)."""
        for stage in self.ir.net.blocks:
            for block in stage:
                order = _importance(block.conv_pw.weight)
                _permute_out(block.conv_pw, block.bn1, order)
                _permute_out(block.conv_dw, block.bn2, order)  # depthwise: filters follow
                if hasattr(block.se, "conv_reduce"):
                    _permute_in(block.se.conv_reduce, order)
                    _permute_out(block.se.conv_expand, None, order)
                    _sort_se(block.se)
                _permute_in(block.conv_pwl, order)
        for stage in (self.ds if hasattr(self, "ds") else ()):
            for block in stage:  # depthwise-separable: only its squeeze-excitation widens
                if hasattr(block.se, "conv_reduce"):
                    _sort_se(block.se)


def _importance(weight: torch.Tensor) -> torch.Tensor:
    return torch.argsort(weight.detach().abs().flatten(1).sum(1), descending=True)


def _permute_out(conv: nn.Module, norm: nn.Module | None, order: torch.Tensor) -> None:
    conv.weight.data = conv.weight.data[order].contiguous()
    if getattr(conv, "bias", None) is not None:
        conv.bias.data = conv.bias.data[order].contiguous()
    if norm is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(norm, name)
            t.data = t.data[order].contiguous()


def _permute_in(conv: nn.Module, order: torch.Tensor) -> None:
    conv.weight.data = conv.weight.data[:, order].contiguous()


def _sort_se(se: nn.Module) -> None:
    order = _importance(se.conv_reduce.weight)
    _permute_out(se.conv_reduce, None, order)
    _permute_in(se.conv_expand, order)

