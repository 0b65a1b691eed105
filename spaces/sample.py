"""python -m spaces.sample n=N seed=S out=DIR [bits=32,8] [input=1x28x28] [classes=10]

Writes ``DIR/<i>/arch.json`` and ``DIR/<i>/model.onnx`` for N architectures sampled uniformly
from the default space: random weights, int8 QDQ on the layers the architecture puts at 8 bits
(calibrated on random images; the files are for timing, not for accuracy).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

USAGE = "usage: python -m spaces.sample n=N seed=S out=DIR [bits=32,8] [input=1x28x28] " \
        "[classes=10]"


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    known = {"n", "seed", "out", "bits", "input", "classes"}
    bad = [a for a in argv if "=" not in a] + sorted(set(args) - known)
    try:
        if bad or "out" not in args:
            raise ValueError(f"unknown arguments {bad}" if bad else "out=DIR is required")
        n, seed = int(args.get("n", 10)), int(args.get("seed", 0))
        bits = [int(b) for b in args.get("bits", "32,8").split(",")]
        chans, height, width = (int(v) for v in args.get("input", "1x28x28").split("x"))
        classes = int(args.get("classes", 10))
        if n < 1 or height != width or min(chans, height, classes) < 1:
            raise ValueError("n must be at least 1 and the input square (CxSxS)")
    except ValueError as exc:
        print(f"error: {exc}. {USAGE}", file=sys.stderr)
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
