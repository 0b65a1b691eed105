"""Memory prediction against measurement: a fine-tuning step per scheme, and one inference.

    python scripts/edge_memory_benchmark.py [--archs 40] [--batch 32]

Samples architectures of the default space (Fashion-MNIST's 1x28x28 input, rpi4's bit-widths
32 and 8, seeded), and for each:

- ``train_memory_kib`` (``latency_models.train_memory``) against the measured peak of one
  real fine-tuning step of :class:`spaces.lean.LeanNet` (``search.step_memory``: glibc's count
  of allocated bytes after every torch op, plus weights, optimizer state and batch), for the
  schemes head, bias, last:1, last:2 and all, on 1 thread;
- ``peak_memory_kib`` from the architecture (``latency_models.memory.arch_schedule``) against
  an independent liveness walk of its exported ONNX graphs (``onnx_schedule``: the fp32 file,
  and the int8 QDQ file with quantize/dequantize pairs collapsed).

Writes ``scripts/results/edge_training/memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.memory import peak_memory_kib  # noqa: E402
from latency_models.train_memory import train_memory  # noqa: E402
from search.step_memory import measure_step, train_step  # noqa: E402
from spaces.arch import all_bits  # noqa: E402
from spaces.build import as_trained, build_model  # noqa: E402
from spaces.lean import LeanNet  # noqa: E402
from spaces.onnx_io import export_fp32, export_int8  # noqa: E402
from spaces.schemes import parse_scheme  # noqa: E402
from spaces.space import RandomChoices, SpaceConfig, sample_arch  # noqa: E402

OUT = ROOT / "scripts" / "results" / "edge_training"
SCHEMES = ("head", "bias", "last:1", "last:2", "all")


def measure(arch, batch: int, seed: int) -> dict:
    lean = LeanNet(as_trained(build_model(arch), seed).eval(), arch)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    out = {}
    for scheme in SCHEMES:
        opt = torch.optim.SGD(lean.set_scheme(parse_scheme(scheme)), lr=0.01, momentum=0.9)
        train_step(lean, opt, x, y)  # the optimizer's state exists before the measured step
        measured = measure_step(lean, opt, x, y)
        predicted = train_memory(arch, scheme, batch)
        out[scheme] = {"predicted_kib": round(predicted.total_kib, 2),
                       "measured_kib": round(measured, 2),
                       "error": round(predicted.total_kib / measured - 1, 4)}
    return out


def peaks(arch, folder: Path, seed: int) -> dict:
    model = as_trained(build_model(arch), seed).eval()
    export_fp32(model, arch, folder / "m.onnx")
    calib = np.random.default_rng(seed).random((16, 1, 28, 28), dtype=np.float32)
    export_int8(folder / "m.onnx", arch, folder / "m8.onnx", calib)
    return {"fp32": {"arch": peak_memory_kib(all_bits(arch, 32)),
                     "onnx": peak_memory_kib(onnx.load(str(folder / "m.onnx")))},
            "int8": {"arch": peak_memory_kib(arch),
                     "onnx": peak_memory_kib(onnx.load(str(folder / "m8.onnx")))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.archs):
            arch = sample_arch(RandomChoices(1000 + i), SpaceConfig(), bits=(32, 8),
                               in_chans=1, input_size=28, num_classes=10)
            rows.append({"arch_id": arch.arch_id, "blocks": sum(s.depth for s in arch.stages),
                         "acts": sorted({s.act for s in arch.stages}),
                         "se": any(s.se_ratio > 0 for s in arch.stages),
                         "train": measure(arch, args.batch, i), "peak": peaks(arch, Path(tmp), i)})
            print(f"{i + 1}/{args.archs}", end="\r", file=sys.stderr)
    summary = {}
    for scheme in SCHEMES:
        errs = [r["train"][scheme]["error"] for r in rows]
        summary[scheme] = {"within_15pct": round(float(np.mean(np.abs(errs) <= 0.15)), 3),
                           "within_5pct": round(float(np.mean(np.abs(errs) <= 0.05)), 3),
                           "median_abs_error": round(statistics.median(map(abs, errs)), 4),
                           "max_abs_error": round(max(map(abs, errs)), 4),
                           "median_measured_kib": round(statistics.median(
                               r["train"][scheme]["measured_kib"] for r in rows), 1)}
    ratio = [r["train"]["bias"]["measured_kib"] / r["train"]["all"]["measured_kib"] for r in rows]
    agree = {p: round(float(np.mean([abs(r["peak"][p]["arch"] / r["peak"][p]["onnx"] - 1) <= 0.01
                                     for r in rows])), 3) for p in ("fp32", "int8")}
    exact = {p: int(sum(r["peak"][p]["arch"] == r["peak"][p]["onnx"] for r in rows))
             for p in ("fp32", "int8")}
    result = {"command": "python scripts/edge_memory_benchmark.py "
                         f"--archs {args.archs} --batch {args.batch}",
              "archs": args.archs, "batch": args.batch, "threads": 1,
              "seconds": round(time.time() - start, 1), "torch": torch.__version__,
              "train_memory": summary,
              "bias_over_all_measured": {"median": round(statistics.median(ratio), 3),
                                         "min": round(min(ratio), 3),
                                         "max": round(max(ratio), 3),
                                         "at_most_quarter": int(sum(r <= 0.25 for r in ratio))},
              "peak_memory_within_1pct": agree, "peak_memory_identical": exact,
              "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Memory: predicted against measured",
        "",
        f"`{result['command']}` ({result['seconds']:.0f} s, torch {torch.__version__}, 1 "
        f"thread). {args.archs} architectures sampled from the default space (1x28x28 input, "
        "bit-widths 32 and 8, seeds 1000 on).",
        "",
        f"## Fine-tuning step (`train_memory_kib`, batch {args.batch})",
        "",
        "Measured: glibc's allocated bytes after every torch op of one real step of "
        "`spaces.lean.LeanNet` (forward, backward, SGD with momentum), plus weights, "
        "optimizer state and the batch.",
        "",
        "| scheme | within ±15% | within ±5% | median abs. error | max abs. error | "
        "median measured KiB |",
        "|---|---|---|---|---|---|",
    ]
    for scheme, s in summary.items():
        lines.append(f"| {scheme} | {100 * s['within_15pct']:.0f}% | "
                     f"{100 * s['within_5pct']:.0f}% | {100 * s['median_abs_error']:.1f}% | "
                     f"{100 * s['max_abs_error']:.1f}% | {s['median_measured_kib']:,.0f} |")
    b = result["bias_over_all_measured"]
    lines += [
        "",
        f"`bias` / `all` measured: median {b['median']}, range {b['min']}-{b['max']}; "
        f"at most a quarter for {b['at_most_quarter']} of {args.archs} architectures.",
        "",
        "## One inference (`peak_memory_kib`, batch 1)",
        "",
        "The architecture's schedule against an independent liveness walk of its exported "
        "graph:",
        "",
        "| graph | within ±1% | identical |",
        "|---|---|---|",
    ]
    for p in ("fp32", "int8"):
        lines.append(f"| {p} | {100 * agree[p]:.0f}% | {exact[p]} of {args.archs} |")
    (OUT / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
