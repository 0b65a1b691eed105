"""python -m spaces.sample n=N seed=S out=DIR [bits=32,8] [input=1x28x28] [classes=10]

Writes ``DIR/<i>/arch.json`` and ``DIR/<i>/model.onnx`` for N architectures sampled uniformly
from the default space: random weights, int8 QDQ on the layers the architecture puts at 8 bits
(calibrated on random images; the files are for timing, not for accuracy).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from spaces.cli import CliError, Command

COMMAND = Command(
    module="spaces.sample",
    summary="Sample architectures uniformly from the default space and write each as\n"
            "DIR/<i>/arch.json and DIR/<i>/model.onnx (random weights, int8 QDQ on its 8-bit\n"
            "layers): networks to time or price, not to use.",
    keys={"out": "the folder to write (required)", "n": "how many (default 10)",
          "seed": "the sampling seed (default 0)",
          "bits": "bit-widths to choose from (default 32,8)",
          "input": "input shape CxSxS (default 1x28x28)",
          "classes": "number of classes (default 10)"},
    examples=["n=20 seed=0 out=samples/"],
    required=("out",),
    usage_args="n=N seed=S out=DIR",
)


def main(argv: list[str]) -> int:
    try:
        args = COMMAND.parse(argv)
        n, seed = int(args.get("n", 10)), int(args.get("seed", 0))
        bits = [int(b) for b in args.get("bits", "32,8").split(",")]
        chans, height, width = (int(v) for v in args.get("input", "1x28x28").split("x"))
        classes = int(args.get("classes", 10))
        if n < 1 or height != width or min(chans, height, classes) < 1:
            raise ValueError("n must be at least 1 and the input square (CxSxS)")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}. {COMMAND.usage()}", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from spaces.arch import ArchError
    from spaces.build import as_trained, build_model
    from spaces.onnx_io import export_fp32, export_int8
    from spaces.space import RandomChoices, SpaceConfig, SpaceError, sample_arch

    out = Path(args["out"])
    torch.manual_seed(seed)
    calib = np.random.default_rng(seed).random((32, chans, height, height), dtype=np.float32)
    try:
        for i in range(n):
            arch = sample_arch(RandomChoices(seed * 1_000_003 + i), SpaceConfig(),
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
