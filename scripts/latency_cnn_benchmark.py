"""Real CNNs on phone cores: the fitted per-device models against measured fp32 and int8.

    python scripts/latency_cnn_benchmark.py          # pixel4 (A76) and pixel4_a55 (A55)

The 70 ImageNet CNNs of ``latency_models/data/mobile_cnn/tflite_cnn_e2e.csv`` (pytorchcv
networks at 224 px, TensorFlow Lite, 1 thread; fp32 and the fully 8-bit model), their ops
from ``ops.csv.gz`` beside it (``scripts/cnn_zoo.py``). Cross-validated by network: 10 folds
(seed 0), each network's fp32 and int8 measurement in the same fold, so every network is
priced once by a model that never saw it, in both precisions. The model is what
``python -m latency_models.fit cnn=... core=...`` fits (one linear op model over fp32 and
int8, with the grouped convolutions of ResNeXt and RegNet as their own kind), without its
lookup of measured networks.

Beside it, on the same folds: a FLOPs-only fit per precision (latency = a x MACs + b), and
the shipped ``pixel3`` model used as it is (HW-NAS-Bench's FBNet blocks on another phone, its
int8 by the ratios transferred from Arm cores: a rank comparison only). Writes
``scripts/results/latency/cnn_phones.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.devices import MODEL_DIR  # noqa: E402
from latency_models.fit import (  # noqa: E402
    accuracy,
    flops_fit,
    precision_settings,
    spearman,
)
from latency_models.model import DeviceModel  # noqa: E402
from latency_models.sources import read_cnn  # noqa: E402

DATA = ROOT / "latency_models" / "data" / "mobile_cnn" / "tflite_cnn_e2e.csv"
OUT = ROOT / "scripts" / "results" / "latency"
CORES = {"pixel4": "pixel4|1large", "pixel4_a55": "pixel4|1small"}


def speedup_error(p32, p8, y32, y8) -> float:
    """Median relative error of the predicted int8 speed-up (fp32 / int8 latency)."""
    true, pred = y32 / y8, p32 / p8
    return round(float(np.median(np.abs(pred - true) / true)), 4)


def run(device: str, core: str, folds: int, seed: int) -> dict:
    samples, ys, groups = read_cnn(DATA, core)
    ys, groups = np.asarray(ys), np.asarray(groups)
    bits = np.array([8 if any(op.bits == 8 for op in s) else 32 for s in samples])
    nets = sorted(set(groups.tolist()))
    order = np.asarray(nets)[np.random.default_rng(seed).permutation(len(nets))]
    macs = np.array([sum(op.macs for op in s) for s in samples], dtype=float)
    native_bits, fallback = precision_settings(samples, "cnn")  # as `fit cnn=` fits it
    pred, flops = np.zeros_like(ys), np.zeros_like(ys)
    for k in range(folds):
        test = np.isin(groups, order[k::folds])
        model = DeviceModel(device=device, power_w=1.0, fallback=fallback,
                            native_bits=native_bits).fit(
            [s for s, t in zip(samples, test) if not t], ys[~test])
        for i in np.flatnonzero(test):
            pred[i] = model.price(samples[i]).latency_ms
        for b in (32, 8):
            train, held = ~test & (bits == b), test & (bits == b)
            a, c = flops_fit(macs[train], ys[train])
            flops[held] = a * macs[held] / 1e6 + c
    pixel3 = DeviceModel.load(MODEL_DIR / "pixel3.json")
    as_is = np.array([pixel3.price(s).latency_ms for s in samples])
    out = {"device": device, "core": core, "networks": len(nets), "folds": folds,
           "seed": seed}
    depthwise = np.array([any(op.kind == "dwconv" for op in s) for s in samples])
    for b, word in ((32, "fp32"), (8, "int8")):
        sel = bits == b
        out[word] = {"model": accuracy(pred[sel], ys[sel], 4),
                     "flops_only": accuracy(flops[sel], ys[sel], 4),
                     "pixel3_as_is": {"spearman": round(spearman(as_is[sel], ys[sel]), 4),
                                      "spearman_depthwise_nets": round(spearman(
                                          as_is[sel & depthwise], ys[sel & depthwise]), 4),
                                      "depthwise_nets": int(np.sum(sel & depthwise))}}
    order32 = {g: i for i, g in enumerate(groups) if bits[i] == 32}
    pairs = [(order32[g], i) for i, g in enumerate(groups) if bits[i] == 8 and g in order32]
    i32, i8 = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    out["speedup"] = {
        "measured_median": round(float(np.median(ys[i32] / ys[i8])), 3),
        "measured_range": [round(float(np.min(ys[i32] / ys[i8])), 3),
                           round(float(np.max(ys[i32] / ys[i8])), 3)],
        "model_median_error": speedup_error(pred[i32], pred[i8], ys[i32], ys[i8]),
        "flops_only_median_error": speedup_error(flops[i32], flops[i8], ys[i32], ys[i8])}
    worst = np.argsort(-np.abs(pred - ys) / ys)[:5]
    out["worst"] = [{"network": str(groups[i]), "precision": "int8" if bits[i] == 8 else "fp32",
                     "measured_ms": round(float(ys[i]), 2), "predicted_ms":
                     round(float(pred[i]), 2)} for i in worst]
    return out


def markdown(results: list[dict], seconds: float) -> str:
    lines = ["# Real CNNs on phone cores: fitted models against measured fp32 and int8", "",
             "`python scripts/latency_cnn_benchmark.py` "
             f"({seconds:.0f} s). 70 pytorchcv ImageNet CNNs at 224 px, TensorFlow Lite, 1 "
             "thread, measured end to end (mobile-ml-benchmark, MIT). Cross-validated by "
             "network: 10 folds, both precisions of a network in the same fold; every "
             "network priced once by a model that never saw it. `pixel3 as is`: the shipped "
             "pixel3 model (FBNet blocks of another phone; its int8 transferred), rank only.",
             "", "| device | precision | predictor | Spearman | within 10% | within 20% | "
             "MAPE |", "|---|---|---|---|---|---|---|"]
    for r in results:
        name = f"{r['device']} ({r['core'].replace('|', ' ')})"
        for word in ("fp32", "int8"):
            for key, label in (("model", "device model"), ("flops_only", "FLOPs only")):
                s = r[word][key]
                lines.append(f"| {name} | {word} | {label} | "
                             f"{s['spearman']:.3f} | {s['within_10pct']:.0%} | "
                             f"{s['within_20pct']:.0%} | {s['mape']:.1%} |")
            p = r[word]["pixel3_as_is"]
            lines.append(f"| {name} | {word} | pixel3 as is | "
                         f"{p['spearman']:.3f} (depthwise nets, {p['depthwise_nets']}: "
                         f"{p['spearman_depthwise_nets']:.3f}) | | | |")
    lines += ["", "int8 speed-up (fp32 / int8 latency) per network:", ""]
    for r in results:
        s = r["speedup"]
        lines.append(f"- {r['device']}: measured median {s['measured_median']} (range "
                     f"{s['measured_range'][0]}-{s['measured_range'][1]}); median error of "
                     f"the predicted speed-up {s['model_median_error']:.1%} (FLOPs only: "
                     f"{s['flops_only_median_error']:.1%})")
    lines += ["", "Largest errors: " + "; ".join(
        f"{r['device']} " + ", ".join(f"{w['network']} {w['precision']} {w['predicted_ms']} "
                                      f"ms for {w['measured_ms']}" for w in r["worst"][:3])
        for r in results), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    start = time.time()
    results = [run(device, core, args.folds, args.seed) for device, core in CORES.items()]
    seconds = time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cnn_phones.json").write_text(json.dumps(
        {"command": "python scripts/latency_cnn_benchmark.py", "seconds": round(seconds, 1),
         "results": results}, indent=1) + "\n")
    text = markdown(results, seconds)
    (out / "cnn_phones.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
