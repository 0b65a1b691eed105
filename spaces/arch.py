"""The architecture as plain data.

An :class:`Arch` is a frozen dataclass that round-trips exactly through JSON. Everything else
(the torch model, the ONNX graph, the latency model's op list, MACs and parameter counts) is
derived from it, never the other way round.

Pruning is part of the architecture: each stage carries a structured pruning ratio, and
:meth:`Arch.layers` returns either the dense layer list (what is trained first) or the pruned one
(what is deployed), with exact channel counts. The JSON records both the sampled ratios and the
resulting channel counts, so the number in the spec is the number in the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

__all__ = ["ACTIVATIONS", "ALL_BITS", "all_bits", "Arch", "ARCH_VERSION", "ArchError",
           "BLOCK_KINDS", "conv_out_size", "kept_channels", "KERNELS", "Layer", "REAL_BITS",
           "se_channels", "SIMULATED_BITS", "Stage", "STEM_KERNEL", "STEM_STRIDE"]

ARCH_VERSION = 1
BLOCK_KINDS = ("ds", "ir")
ACTIVATIONS = ("relu", "hswish")
KERNELS = (3, 5, 7)
REAL_BITS = (32, 16, 8)
SIMULATED_BITS = (6, 4)
ALL_BITS = REAL_BITS + SIMULATED_BITS
STEM_KERNEL = 3
STEM_STRIDE = 2


class ArchError(ValueError):
    """An architecture that is not well formed."""


def kept_channels(channels: int, prune_ratio: float) -> int:
    """Channels left after removing ``prune_ratio`` of ``channels`` (at least one)."""
    return max(1, int(round(channels * (1.0 - prune_ratio))))


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Spatial output size of a 'same'-padded convolution (timm's symmetric padding)."""
    pad = (kernel - 1) // 2
    return (size + 2 * pad - kernel) // stride + 1


def se_channels(chs: int, mid_chs: int, in_chs: int, se_ratio: float) -> int:
    """Squeeze-excitation width, exactly as timm's EfficientNet builder computes it.

    The builder divides the ratio by the block's expansion (``se_from_exp=False``), and we pass
    the expansion as ``mid_chs / in_chs``; repeating the same float operations keeps the result
    identical to what timm builds.
    """
    if se_ratio <= 0:
        return 0
    ratio = se_ratio / (mid_chs / in_chs)
    return int(round(chs * ratio))


@dataclass(frozen=True)
class Stage:
    """One stage: ``depth`` blocks of the same kind; only the first one may have a stride.

    Attributes:
        block: "ds" (depthwise-separable) or "ir" (inverted residual).
        kernel: depthwise kernel size, 3, 5 or 7.
        expansion: expansion ratio of "ir" blocks (1 for "ds").
        se_ratio: squeeze-excitation ratio; 0 means no squeeze-excitation.
        act: "relu" or "hswish".
        depth: number of blocks.
        stride: stride of the first block (1 or 2).
        out_chs: output width before pruning.
        prune_ratio: share of the stage's channels (its output width and each block's expanded
            width) that structured pruning removes.
        bits: one bit-width per block.
    """

    block: str
    kernel: int
    expansion: int
    se_ratio: float
    act: str
    depth: int
    stride: int
    out_chs: int
    prune_ratio: float
    bits: tuple[int, ...]

    def __post_init__(self) -> None:
        problems = []
        if self.block not in BLOCK_KINDS:
            problems.append(f"block {self.block!r} is not one of {BLOCK_KINDS}")
        if self.kernel not in KERNELS:
            problems.append(f"kernel {self.kernel} is not one of {KERNELS}")
        if self.block == "ds" and self.expansion != 1:
            problems.append("a 'ds' stage has expansion 1")
        if self.expansion < 1:
            problems.append(f"expansion {self.expansion} is below 1")
        if not 0 <= self.se_ratio < 1:
            problems.append(f"se_ratio {self.se_ratio} is outside [0, 1)")
        if self.act not in ACTIVATIONS:
            problems.append(f"act {self.act!r} is not one of {ACTIVATIONS}")
        if self.depth < 1:
            problems.append(f"depth {self.depth} is below 1")
        if self.stride not in (1, 2):
            problems.append(f"stride {self.stride} is not 1 or 2")
        if self.out_chs < 1:
            problems.append(f"out_chs {self.out_chs} is below 1")
        if not 0 <= self.prune_ratio < 1:
            problems.append(f"prune_ratio {self.prune_ratio} is outside [0, 1)")
        if len(self.bits) != self.depth:
            problems.append(f"{len(self.bits)} bit-widths for {self.depth} blocks")
        problems += [f"bit-width {b} is not one of {ALL_BITS}" for b in self.bits
                     if b not in ALL_BITS]
        if problems:
            raise ArchError("invalid stage: " + "; ".join(problems))

    @property
    def kept_out_chs(self) -> int:
        return kept_channels(self.out_chs, self.prune_ratio)


@dataclass(frozen=True)
class Layer:
    """One layer of the network as built: the unit that carries a bit-width.

    ``kind`` is "stem", "ds", "ir", "head" or "classifier". Sizes are the spatial side of the
    square input and output feature maps. ``rd_chs`` is the squeeze-excitation width (0: none).
    """

    name: str
    kind: str
    in_chs: int
    mid_chs: int
    out_chs: int
    rd_chs: int
    kernel: int
    stride: int
    in_size: int
    out_size: int
    act: str
    skip: bool
    bits: int

    @property
    def params(self) -> int:
        """Trainable parameters (conv weights, BN affine, SE and classifier biases)."""
        ci, cm, co, rd, k = self.in_chs, self.mid_chs, self.out_chs, self.rd_chs, self.kernel
        if self.kind in ("stem", "head"):
            return ci * co * k * k + 2 * co
        if self.kind == "classifier":
            return ci * co + co
        se = (cm * rd + rd + rd * cm + cm) if rd else 0
        if self.kind == "ds":
            return ci * k * k + 2 * ci + se + ci * co + 2 * co
        return ci * cm + 2 * cm + cm * k * k + 2 * cm + se + cm * co + 2 * co

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image through this layer."""
        ci, cm, co, rd, k = self.in_chs, self.mid_chs, self.out_chs, self.rd_chs, self.kernel
        hi, ho = self.in_size ** 2, self.out_size ** 2
        if self.kind in ("stem", "head"):
            return ho * ci * co * k * k
        if self.kind == "classifier":
            return ci * co
        se = 2 * cm * rd
        if self.kind == "ds":
            return ho * ci * k * k + se + ho * ci * co
        return hi * ci * cm + ho * cm * k * k + se + ho * cm * co


@dataclass(frozen=True)
class Arch:
    """A MobileNet-style network: stem, stages of blocks, head conv, pooling, classifier.

    ``in_chans`` and ``input_size`` are what the dataset gives; the network resizes to
    ``resolution`` inside the graph.
    """

    in_chans: int
    input_size: int
    num_classes: int
    resolution: int
    stem_chs: int
    stem_bits: int
    stages: tuple[Stage, ...]
    head_chs: int
    head_bits: int
    classifier_bits: int
    version: int = field(default=ARCH_VERSION)

    def __post_init__(self) -> None:
        problems = []
        if self.version != ARCH_VERSION:
            problems.append(f"version {self.version} (this code reads version {ARCH_VERSION})")
        for name in ("in_chans", "input_size", "resolution", "stem_chs", "head_chs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} is below 1")
        if self.num_classes < 2:
            problems.append(f"num_classes {self.num_classes} is below 2")
        if not self.stages:
            problems.append("no stages")
        for name in ("stem_bits", "head_bits", "classifier_bits"):
            if getattr(self, name) not in ALL_BITS:
                problems.append(f"{name} {getattr(self, name)} is not one of {ALL_BITS}")
        if problems:
            raise ArchError("invalid architecture: " + "; ".join(problems))

    # ---- derived structure -------------------------------------------------------------
    def layers(self, pruned: bool = True) -> tuple[Layer, ...]:
        """The layer list, pruned (deployed) or dense (before pruning)."""
        return tuple(Layer(*fields) for fields in self.layer_fields(pruned))

    def layer_fields(self, pruned: bool = True) -> list[tuple]:
        """The fields of each :class:`Layer`, in order, as plain tuples (what bulk pricing
        reads: building thousands of frozen dataclasses costs more than the pricing)."""
        size = conv_out_size(self.resolution, STEM_KERNEL, STEM_STRIDE)
        out = [("stem", "stem", self.in_chans, 0, self.stem_chs, 0, STEM_KERNEL,
                STEM_STRIDE, self.resolution, size, "relu", False, self.stem_bits)]
        chs = self.stem_chs
        for s, stage in enumerate(self.stages):
            out_chs = stage.kept_out_chs if pruned else stage.out_chs
            for b in range(stage.depth):
                stride = stage.stride if b == 0 else 1
                new_size = conv_out_size(size, stage.kernel, stride)
                if stage.block == "ds":
                    mid = chs
                else:
                    mid = chs * stage.expansion
                    mid = kept_channels(mid, stage.prune_ratio) if pruned else mid
                rd = se_channels(mid if stage.block == "ir" else chs, mid, chs, stage.se_ratio)
                out.append((f"s{s}.b{b}", stage.block, chs, mid, out_chs, rd, stage.kernel,
                            stride, size, new_size, stage.act, b > 0, stage.bits[b]))
                chs, size = out_chs, new_size
        out.append(("head", "head", chs, 0, self.head_chs, 0, 1, 1, size, size, "relu",
                    False, self.head_bits))
        out.append(("classifier", "classifier", self.head_chs, 0, self.num_classes, 0, 1,
                    1, 1, 1, "none", False, self.classifier_bits))
        return out

    def params(self, pruned: bool = True) -> int:
        return sum(layer.params for layer in self.layers(pruned))

    def macs(self, pruned: bool = True) -> int:
        return sum(layer.macs for layer in self.layers(pruned))

    def size_kib(self, pruned: bool = True) -> float:
        """Weight storage with every parameter of a layer at that layer's bit-width
        (batch norm folds into the convolutions on export)."""
        total_bits = 0
        for layer in self.layers(pruned):
            total_bits += layer.params * layer.bits
        return total_bits / 8 / 1024

    @property
    def bits(self) -> tuple[int, ...]:
        """Bit-width of every layer, in layer order."""
        return tuple(layer.bits for layer in self.layers())

    @property
    def is_pruned(self) -> bool:
        return any(stage.prune_ratio > 0 for stage in self.stages)

    @property
    def arch_id(self) -> str:
        """Content hash of the architecture (not of any weights)."""
        return hashlib.sha256(self.to_json(indent=None).encode()).hexdigest()[:16]

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["stages"] = [dict(asdict(s), bits=list(s.bits)) for s in self.stages]
        # Recorded for readers; checked on load so the spec and the model cannot drift apart.
        data["kept_chs"] = [s.kept_out_chs for s in self.stages]
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Arch:
        if not isinstance(data, dict):
            raise ArchError(f"an architecture is a JSON object, got {type(data).__name__}")
        data = dict(data)
        kept = data.pop("kept_chs", None)
        try:
            stages = tuple(Stage(**dict(s, bits=tuple(s["bits"]))) for s in data.pop("stages"))
            arch = cls(stages=stages, **data)
        except (TypeError, KeyError) as exc:
            raise ArchError(f"architecture JSON does not match version {ARCH_VERSION}: {exc}")
        if kept is not None and list(kept) != [s.kept_out_chs for s in arch.stages]:
            raise ArchError(f"kept_chs {kept} disagree with the pruning ratios "
                            f"({[s.kept_out_chs for s in arch.stages]})")
        return arch

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"architecture is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def dense(self) -> Arch:
        """The same architecture with every pruning ratio set to zero."""
        from dataclasses import replace

        return replace(self, stages=tuple(replace(s, prune_ratio=0.0) for s in self.stages))


def all_bits(arch: Arch, bits: int) -> Arch:
    """The architecture with every layer at ``bits`` (e.g. 32: what its fp32 export runs)."""
    from dataclasses import replace

    stages = tuple(replace(st, bits=(bits,) * st.depth) for st in arch.stages)
    return replace(arch, stages=stages, stem_bits=bits, head_bits=bits, classifier_bits=bits)
