"""The search space, and sampling an :class:`Arch` from it define-by-run.

``sample_arch`` takes anything with Optuna's ``suggest_categorical`` (an Optuna trial, a
``FixedTrial``, or :class:`RandomChoices` for uniform sampling without a study). This is the
only module that names the search parameters.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, Sequence

from spaces.arch import ACTIVATIONS, ALL_BITS, BLOCK_KINDS, KERNELS, Arch, Stage

__all__ = ["arch_params", "outside_space", "RandomChoices", "sample_arch", "SpaceConfig",
           "SpaceError", "StageChoices", "Suggester"]


class SpaceError(ValueError):
    """A search-space configuration that cannot be sampled."""


@dataclass
class StageChoices:
    """Choices for one stage; ``stride`` is fixed per stage (it sets the feature-map sizes)."""

    stride: int = 2
    out_chs: list[int] = field(default_factory=lambda: [16, 24, 32])
    depth: list[int] = field(default_factory=lambda: [1, 2])
    block: list[str] = field(default_factory=lambda: ["ds", "ir"])


@dataclass
class SpaceConfig:
    """The default space: small MobileNet-style networks for 28x28 to 32x32 images.

    Defaults are sized so that one proxy training takes seconds on 2 CPU cores.
    """

    name: str = "mobilenet"
    # The image sizes (data.size) the space is made for, smallest and largest; the search
    # refuses others and names a space that takes them.
    input_sizes: list[int] = field(default_factory=lambda: [8, 64])
    # Whether a network may resize the images up (resolution above data.size). False: the
    # resolutions above data.size are left out of the choices (a camera's image is never
    # upsampled), and images smaller than the smallest resolution are refused.
    upsample: bool = True
    resolution: list[int] = field(default_factory=lambda: [28, 32])
    stem_chs: list[int] = field(default_factory=lambda: [8, 16, 24])
    head_chs: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel: list[int] = field(default_factory=lambda: [3, 5, 7])
    expansion: list[int] = field(default_factory=lambda: [2, 3, 4, 6])
    se_ratio: list[float] = field(default_factory=lambda: [0.0, 0.25])
    act: list[str] = field(default_factory=lambda: ["relu", "hswish"])
    prune_ratio: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    stages: list[StageChoices] = field(default_factory=lambda: [
        StageChoices(stride=1, out_chs=[8, 16], depth=[1], block=["ds", "ir"]),
        StageChoices(stride=2, out_chs=[16, 24, 32], depth=[1, 2, 3], block=["ds", "ir"]),
        StageChoices(stride=2, out_chs=[32, 48, 64], depth=[1, 2, 3], block=["ds", "ir"]),
        StageChoices(stride=2, out_chs=[64, 96, 128], depth=[1, 2], block=["ds", "ir"]),
    ])

    def validate(self) -> None:
        """Raise :class:`SpaceError` naming every bad choice."""
        problems = []

        def check(name: str, values: Sequence[Any], allowed: Sequence[Any] | None = None,
                  positive: bool = False) -> None:
            if not values:
                problems.append(f"space.{name} is empty")
            for v in values:
                if allowed is not None and v not in allowed:
                    problems.append(f"space.{name} has {v!r}, not one of {list(allowed)}")
                if positive and (not isinstance(v, int) or v < 1):
                    problems.append(f"space.{name} has {v!r}, not a positive integer")

        check("resolution", self.resolution, positive=True)
        check("input_sizes", self.input_sizes, positive=True)
        if len(self.input_sizes) != 2 or self.input_sizes[0] > self.input_sizes[-1]:
            problems.append(f"space.input_sizes={self.input_sizes} is not [smallest, largest]")
        check("stem_chs", self.stem_chs, positive=True)
        check("head_chs", self.head_chs, positive=True)
        check("kernel", self.kernel, KERNELS)
        check("expansion", self.expansion, positive=True)
        check("act", self.act, ACTIVATIONS)
        check("se_ratio", self.se_ratio)
        check("prune_ratio", self.prune_ratio)
        problems += [f"space.se_ratio has {v}, outside [0, 1)" for v in self.se_ratio
                     if not 0 <= v < 1]
        problems += [f"space.prune_ratio has {v}, outside [0, 1)" for v in self.prune_ratio
                     if not 0 <= v < 1]
        if not self.stages:
            problems.append("space.stages is empty")
        for i, st in enumerate(self.stages):
            if st.stride not in (1, 2):
                problems.append(f"space.stages[{i}].stride is {st.stride}, not 1 or 2")
            check(f"stages[{i}].out_chs", st.out_chs, positive=True)
            check(f"stages[{i}].depth", st.depth, positive=True)
            check(f"stages[{i}].block", st.block, BLOCK_KINDS)
        if problems:
            raise SpaceError("the search space is not valid: " + "; ".join(problems)
                             + ". Fix these values in conf/space/ or on the command line.")


    def identity(self) -> dict:
        """What makes two spaces the same space (study and supernet fingerprints): the
        choices, without ``input_sizes`` and ``upsample``, which only say which data the space
        takes (:meth:`for_input` applies them to the choices)."""
        data = asdict(self)
        del data["input_sizes"], data["upsample"]
        return data

    def size_range(self) -> tuple[int, int]:
        """(smallest, largest) image size in px the space takes: ``input_sizes``, and where
        it does not upsample, no smaller than its smallest resolution."""
        lo, hi = self.input_sizes[0], self.input_sizes[-1]
        return (lo if self.upsample else max(lo, min(self.resolution))), hi

    def takes(self, input_size: int) -> bool:
        """Whether images of ``input_size`` px fit this space."""
        lo, hi = self.size_range()
        return lo <= input_size <= hi

    def for_input(self, input_size: int) -> SpaceConfig:
        """The space as it applies to images of ``input_size`` px: where the space does not
        upsample, the resolutions above ``input_size`` are left out.

        Raises:
            SpaceError: the images are outside the sizes the space takes.
        """
        if not self.takes(input_size):
            lo, hi = self.input_sizes[0], self.input_sizes[-1]
            if not self.upsample and input_size < min(self.resolution):
                why = (f"smaller than its smallest resolution, {min(self.resolution)} px (it "
                       "does not upsample)")
            elif input_size < lo:
                why = f"smaller than the {lo} px it is made for"
            else:
                why = f"larger than the {hi} px it is made for (its networks run at " \
                      f"{min(self.resolution)}-{max(self.resolution)} px)"
            raise SpaceError(f"space={self.name} does not take images of {input_size} px: "
                             f"they are {why}")
        if self.upsample:
            return self
        return replace(self, resolution=[r for r in self.resolution if r <= input_size])


class Suggester(Protocol):
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class RandomChoices:
    """Uniform sampling with a seeded generator, for use without an Optuna study."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self.rng.choice(list(choices))
        self.params[name] = value
        return value


def sample_arch(trial: Suggester, space: SpaceConfig, *, in_chans: int, input_size: int,
                num_classes: int, bits: Sequence[int]) -> Arch:
    """Sample an architecture define-by-run.

    Args:
        trial: an Optuna trial or anything with ``suggest_categorical``.
        space: the choices.
        in_chans: the dataset's image channels.
        input_size: the dataset's image size (square).
        num_classes: the dataset's classes.
        bits: the bit-widths the target device supports (each layer picks one).
    """
    bits = [int(b) for b in bits]
    bad = [b for b in bits if b not in ALL_BITS]
    if not bits or bad:
        raise SpaceError(f"bit-widths {bad or bits} are not supported; use a subset of "
                         f"{list(ALL_BITS)}")

    def pick(name: str, choices: Sequence[Any]) -> Any:
        return trial.suggest_categorical(name, list(choices))

    resolution = pick("resolution", space.resolution)
    stem_chs = pick("stem_chs", space.stem_chs)
    stem_bits = pick("stem_bits", bits)
    stages = []
    for i, st in enumerate(space.stages):
        block = pick(f"s{i}_block", st.block)
        expansion = pick(f"s{i}_expansion", space.expansion) if block == "ir" else 1
        depth = pick(f"s{i}_depth", st.depth)
        stages.append(Stage(
            block=block,
            kernel=pick(f"s{i}_kernel", space.kernel),
            expansion=expansion,
            se_ratio=float(pick(f"s{i}_se_ratio", space.se_ratio)),
            act=pick(f"s{i}_act", space.act),
            depth=depth,
            stride=st.stride,
            out_chs=pick(f"s{i}_out_chs", st.out_chs),
            prune_ratio=float(pick(f"s{i}_prune_ratio", space.prune_ratio)),
            bits=tuple(pick(f"s{i}_b{b}_bits", bits) for b in range(depth)),
        ))
    return Arch(
        in_chans=in_chans, input_size=input_size, num_classes=num_classes,
        resolution=resolution, stem_chs=stem_chs, stem_bits=stem_bits, stages=tuple(stages),
        head_chs=pick("head_chs", space.head_chs), head_bits=pick("head_bits", bits),
        classifier_bits=pick("classifier_bits", bits),
    )


def arch_params(arch: Arch) -> dict[str, Any]:
    """The choices :func:`sample_arch` makes for ``arch``, by name (the parameters of the
    Optuna trial that samples it)."""
    params: dict[str, Any] = {"resolution": arch.resolution, "stem_chs": arch.stem_chs,
                              "stem_bits": arch.stem_bits, "head_chs": arch.head_chs,
                              "head_bits": arch.head_bits,
                              "classifier_bits": arch.classifier_bits}
    for i, st in enumerate(arch.stages):
        params.update({f"s{i}_block": st.block, f"s{i}_depth": st.depth,
                       f"s{i}_kernel": st.kernel, f"s{i}_se_ratio": st.se_ratio,
                       f"s{i}_act": st.act, f"s{i}_out_chs": st.out_chs,
                       f"s{i}_prune_ratio": st.prune_ratio})
        if st.block == "ir":
            params[f"s{i}_expansion"] = st.expansion
        params.update({f"s{i}_b{b}_bits": bits for b, bits in enumerate(st.bits)})
    return params


class _Replay:
    """Answers each choice with an architecture's own, noting those the space does not
    offer."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params, self.outside = params, []

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self.params.get(name, choices[0])
        if value not in choices:
            self.outside.append(f"{name}={value} (the space offers {list(choices)})")
        return value


def outside_space(arch: Arch, space: SpaceConfig, bits: Sequence[int]) -> list[str]:
    """What makes ``arch`` an architecture the space (at these bit-widths) does not hold:
    each choice it does not offer, or its number of stages or strides; empty when the space
    holds it."""
    if len(arch.stages) != len(space.stages):
        return [f"{len(arch.stages)} stages (the space has {len(space.stages)})"]
    replay = _Replay(arch_params(arch))
    again = sample_arch(replay, space, in_chans=arch.in_chans, input_size=arch.input_size,
                        num_classes=arch.num_classes, bits=bits)
    problems = list(replay.outside)
    problems += [f"stage {i} has stride {mine.stride} (the space: {theirs.stride})"
                 for i, (mine, theirs) in enumerate(zip(arch.stages, again.stages))
                 if mine.stride != theirs.stride]
    if not problems and again != arch:
        problems.append("it is not one the space samples")
    return problems
