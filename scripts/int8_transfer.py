"""int8 on devices measured only in fp32 (rpi4, pixel3): ratios learned on Arm phone cores.

    python scripts/int8_transfer.py            # validate, print, write results
    python scripts/int8_transfer.py --apply    # ... and give rpi4 and pixel3 their int8 set

The scales (one per convolution kind: int8 cost / fp32 cost, :mod:`latency_models.int8`) are
pooled over three cores measured in both precisions on the 70 real CNNs of
``latency_models/data/mobile_cnn/`` (TFLite, 1 thread): the Pixel 4's Cortex-A76 and
Cortex-A55 and the Snapdragon 710's Cortex-A75 (``mi8se|1large``). Validation, core by core:
every core of the file with both precisions is held out in turn (scales from the training
cores other than it), its fp32 model is fitted on its own fp32 measurements, and its int8
latencies are predicted by the scales: Spearman, shares within +-10% and +-20%, MAPE, and the
median error of the int8 speed-up, beside pricing int8 as fp32 (what rpi4 and pixel3 did).
Then what the transfer predicts for the real CNNs' int8 speed-ups on rpi4 and pixel3, beside
the Pixel 4 A76 and A55 measurements. Writes ``scripts/results/latency/int8_transfer.json``
and ``.md``.
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
from latency_models.fit import accuracy  # noqa: E402
from latency_models.int8 import add_int8, fp32_model, int8_scales, predict_int8  # noqa: E402
from latency_models.model import DeviceModel  # noqa: E402
from latency_models.sources import read_cnn  # noqa: E402

DATA = ROOT / "latency_models" / "data" / "mobile_cnn" / "tflite_cnn_e2e.csv"
OUT = ROOT / "scripts" / "results" / "latency"
TRAIN = ("pixel4|1large", "pixel4|1small", "mi8se|1large")
HELD = ("mi8se|1small", "s10|1large", "s10|1med", "s10|1small", "a03s|1large")
NAMES = {"pixel4|1large": "Pixel 4 Cortex-A76", "pixel4|1small": "Pixel 4 Cortex-A55",
         "mi8se|1large": "Snapdragon 710 Cortex-A75", "mi8se|1small":
         "Snapdragon 710 Cortex-A55", "s10|1large": "Galaxy S10 Mongoose M4",
         "s10|1med": "Galaxy S10 Cortex-A75", "s10|1small": "Galaxy S10 Cortex-A55",
         "a03s|1large": "Galaxy A03s Cortex-A53"}
SOURCE = ("int8/fp32 scales per convolution kind learned on Arm cores measured in both "
          "precisions (Pixel 4 A76 and A55, Snapdragon 710 A75; TFLite, 70 CNNs): "
          "transferred, not measured on this device")


def split(samples, ys, groups):
    """fp32 and int8 samples of the same networks, in the same order."""
    idx = {(g, any(op.bits == 8 for op in s)): i
           for i, (s, g) in enumerate(zip(samples, groups))}
    nets = sorted({g for g, low in idx if low and (g, False) in idx})
    i32 = [idx[(g, False)] for g in nets]
    i8 = [idx[(g, True)] for g in nets]
    y = np.asarray(ys)
    return ([samples[i] for i in i32], y[i32], [samples[i] for i in i8], y[i8])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apply", action="store_true", help="write rpi4's and pixel3's "
                        "int8 coefficient sets into latency_models/data/")
    args = parser.parse_args(argv)
    start = time.time()
    data = {c: read_cnn(DATA, c) for c in TRAIN + HELD}
    validation = {}
    for core in TRAIN + HELD:
        train = {c: data[c][:2] for c in TRAIN if c != core}
        scales = int8_scales(train)
        s32, y32, s8, y8 = split(*data[core])
        model = fp32_model(core, s32 + s8, np.r_[y32, y8])
        p8 = predict_int8(model, s8, scales)
        p32 = np.array([model.price(s).latency_ms for s in s32])
        as_fp32 = predict_int8(model, s8, dict.fromkeys(scales, 1.0))
        speed, pspeed = y32 / y8, p32 / p8
        validation[core] = {
            "core": NAMES[core], "held_out_of_training": core not in TRAIN,
            "scales_from": [c for c in TRAIN if c != core], "transfer": accuracy(p8, y8, 4),
            "int8_as_fp32": accuracy(as_fp32, y8, 4),
            "speedup_measured_median": round(float(np.median(speed)), 3),
            "speedup_predicted_median": round(float(np.median(pspeed)), 3),
            "speedup_median_error": round(float(np.median(np.abs(pspeed - speed) / speed)), 4)}
    scales = int8_scales({c: data[c][:2] for c in TRAIN})
    s32, _, s8, _ = split(*data["pixel4|1large"])
    devices = {}
    for device in ("rpi4", "pixel3"):
        path = MODEL_DIR / f"{device}.json"
        model = DeviceModel.load(path)
        if "8" in model.ops.borrowed_:  # idempotent: from the fp32 model again
            model.ops.coef_.pop("8")
            model.ops.borrowed_ = {}
            model.meta = {k: v for k, v in model.meta.items() if k != "int8"}
        model = add_int8(model, scales, SOURCE)
        p32 = np.array([model.price(s).latency_ms for s in s32])
        p8 = np.array([model.price(s).latency_ms for s in s8])
        devices[device] = {"speedup_median": round(float(np.median(p32 / p8)), 3),
                           "speedup_range": [round(float(np.min(p32 / p8)), 3),
                                             round(float(np.max(p32 / p8)), 3)]}
        if args.apply:
            model.save(path)
            devices[device]["hash"] = model.hash
    for core in ("pixel4|1large", "pixel4|1small"):
        _, y32, _, y8 = split(*data[core])
        devices[NAMES[core] + " (measured)"] = {
            "speedup_median": round(float(np.median(y32 / y8)), 3),
            "speedup_range": [round(float(np.min(y32 / y8)), 3),
                              round(float(np.max(y32 / y8)), 3)]}
    result = {"command": "python scripts/int8_transfer.py", "seconds":
              round(time.time() - start, 1), "training_cores": list(TRAIN), "scales": scales,
              "validation": validation, "speedups_of_the_70_cnns": devices}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8_transfer.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# int8 on devices measured only in fp32: scales learned on Arm cores", "",
             f"`python scripts/int8_transfer.py` ({result['seconds']:.0f} s). Scales (int8 "
             "cost / fp32 cost per convolution kind, pooled over the Pixel 4 A76 and A55 and "
             "the Snapdragon 710 A75, bounded below by 0.25): "
             + ", ".join(f"{k} {v}" for k, v in scales.items()) + ".", "",
             "Validation: each core held out in turn (scales from the other training cores), "
             "its int8 latencies of the 70 CNNs predicted from its own fp32 model.", "",
             "| held-out core | in training | transfer: Spearman | within 10% | within 20% | "
             "MAPE | int8 as fp32: Spearman | MAPE | speed-up measured / predicted "
             "(median) | speed-up error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in validation.values():
        t, f = v["transfer"], v["int8_as_fp32"]
        lines.append(f"| {v['core']} | {'no' if v['held_out_of_training'] else 'yes, left out'}"
                     f" | {t['spearman']:.3f} | {t['within_10pct']:.0%} | "
                     f"{t['within_20pct']:.0%} | {t['mape']:.1%} | {f['spearman']:.3f} | "
                     f"{f['mape']:.1%} | {v['speedup_measured_median']} / "
                     f"{v['speedup_predicted_median']} | {v['speedup_median_error']:.1%} |")
    lines += ["", "int8 speed-up of the 70 CNNs (fp32 / int8 latency):", ""]
    for name, d in devices.items():
        lines.append(f"- {name}: median {d['speedup_median']}, range "
                     f"{d['speedup_range'][0]}-{d['speedup_range'][1]}")
    text = "\n".join(lines) + "\n"
    (OUT / "int8_transfer.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
