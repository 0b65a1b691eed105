"""python -m spaces.sample n=N seed=S out=DIR [space=mobilenet] [bits=[32,8]] [input=1x28x28]

Writes ``DIR/<i>/arch.json`` and ``DIR/<i>/model.onnx`` for N architectures sampled uniformly
from a space (``space=``, a file of ``conf/space/``; default ``mobilenet``): random weights,
int8 QDQ on the layers the architecture puts at 8 bits (calibrated on random images; the files
are for timing, not for accuracy).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from spaces.cli import HydraApp, arg, group_options
from spaces.space import SpaceConfig

__all__ = ["COMMAND", "main", "sample", "SampleConfig", "space_names", "SPACE_CONF"]

# The space config group: the project's conf/space/ and ./conf/space/ where the command runs.
SPACE_CONF = Path(__file__).resolve().parent.parent / "conf"


def space_names() -> list[str]:
    """The options of the ``space`` config group (shipped and the user's)."""
    return group_options(SPACE_CONF, "space")


@dataclass
class SampleConfig:
    """``python -m spaces.sample``: how many architectures, for which input, where."""

    space: SpaceConfig = field(default_factory=SpaceConfig)  # space=NAME (conf/space/)
    out: str = arg(help="the folder to write")
    n: int = arg(10, "how many")
    seed: int = arg(0, "the sampling seed")
    bits: list[int] = arg([32, 8], "bit-widths to choose from")
    input: str = arg("1x28x28", "input shape CxSxS")
    classes: int = arg(10, "number of classes")


COMMAND = HydraApp(
    module="spaces.sample",
    summary="Sample architectures uniformly from a space (space=NAME, default mobilenet)\n"
            "and write each as DIR/<i>/arch.json and DIR/<i>/model.onnx (random weights,\n"
            "int8 QDQ on its 8-bit layers): networks to time or price, not to use.",
    schema=SampleConfig,
    examples=["n=20 seed=0 out=samples/", "n=5 bits=[32] input=3x32x32 out=samples/",
              "n=5 space=mobilenet_224 input=3x160x160 out=camera-samples/"],
    usage_args="n=N seed=S out=DIR",
    groups={"space": space_names}, hidden=("space",), group_defaults=(("space", "mobilenet"),),
    searchpath=(str(SPACE_CONF), "conf"),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.run(sample, argv)


def sample(cfg: SampleConfig) -> int:
    """Write the architectures ``cfg`` asks for. Returns the exit status."""
    try:
        n, seed, bits, classes = cfg.n, cfg.seed, list(cfg.bits), cfg.classes
        chans, height, width = (int(v) for v in cfg.input.split("x"))
        if n < 1 or height != width or min(chans, height, classes) < 1:
            raise ValueError
    except ValueError:
        print(f"error: n={cfg.n} must be at least 1 and input={cfg.input!r} a square shape "
              f"CxSxS such as 1x28x28. {COMMAND.usage()}", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from spaces.arch import ArchError
    from spaces.build import as_trained, build_model
    from spaces.onnx_io import export_fp32, export_int8
    from spaces.space import RandomChoices, SpaceError, sample_arch

    out = Path(cfg.out)
    torch.manual_seed(seed)
    calib = np.random.default_rng(seed).random((32, chans, height, height), dtype=np.float32)
    try:
        space = cfg.space.for_input(height)
        for i in range(n):
            arch = sample_arch(RandomChoices(seed * 1_000_003 + i), space,
                               in_chans=chans, input_size=height, num_classes=classes,
                               bits=bits)
            folder = out / str(i)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "arch.json").write_text(arch.to_json())
            model = as_trained(build_model(arch), seed * 1_000_003 + i).eval()
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                export_fp32(model, arch, fp32)
                export_int8(fp32, arch, folder / "model.onnx", calib)
            print(f"{folder}: {arch.arch_id} params {arch.params():,} MACs {arch.macs():,}")
    except (ArchError, SpaceError) as exc:
        hint = (f"; give input=CxSxS with a size the space takes, or another space= (known: "
                f"{', '.join(space_names())})" if isinstance(exc, SpaceError) else "")
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
