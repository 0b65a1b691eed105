"""Fit a device model from measurements and print its held-out accuracy.

    # this machine, from the project's own profiler
    python -m latency_models.fit device=host \
        measurements=latency_models/data/host_measurements.csv \
        power_w=15 out=latency_models/data/host.json
    # Raspberry Pi 4, from HW-NAS-Bench's FBNet block table
    python -m latency_models.fit device=rpi4 \
        fbnet=latency_models/data/hwnasbench_fbnet_blocks.csv \
        column=raspi4_latency power_w=5.25 out=latency_models/data/rpi4.json

Held-out accuracy is 5-fold cross-validation over the measured units (networks or blocks),
predicted by the regressor alone (no lookup of the held-out unit).
"""

from __future__ import annotations

import sys

import numpy as np

from latency_models.model import DeviceModel
from latency_models.ops import Op
from latency_models.sources import MeasurementError, read_fbnet, read_profile

USAGE = ("usage: python -m latency_models.fit device=NAME (measurements=FILE.csv | "
         "fbnet=FILE.csv column=COLUMN) power_w=WATTS [power_source=TEXT] out=FILE.json")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def cross_validate(make: callable, samples: list[list[Op]], ys: list[float], folds: int = 5,
                   seed: int = 0) -> dict:
    """Within-10% share, MAPE and Spearman of held-out predictions."""
    y = np.asarray(ys)
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.zeros_like(y)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        model = make().fit([samples[i] for i in train], y[train])
        for i in test:
            pred[i] = model.predict(samples[i]).latency_ms
    err = np.abs(pred - y) / y
    return {"within_10pct": float(np.mean(err <= 0.10)), "mape": float(np.mean(err)),
            "spearman": spearman(pred, y), "n": int(len(y)), "folds": folds}


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    known = {"device", "measurements", "fbnet", "column", "power_w", "power_source", "out"}
    bad = [a for a in argv if "=" not in a] + [k for k in args if k not in known]
    if bad or "device" not in args or "out" not in args or "power_w" not in args or (
            ("measurements" in args) == ("fbnet" in args)):
        print(f"error: {'unknown arguments ' + str(bad) if bad else 'missing arguments'}. "
              + USAGE, file=sys.stderr)
        return 2
    try:
        if "fbnet" in args:
            samples, ys, _ = read_fbnet(args["fbnet"], args.get("column", "raspi4_latency"))
            source = f"{args['fbnet']} column {args.get('column', 'raspi4_latency')}"
        else:
            samples, ys = read_profile(args["measurements"])
            source = args["measurements"]
    except MeasurementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fallback = {} if any(op.bits == 8 for s in samples for op in s) else {"8": 32}

    def make() -> DeviceModel:
        return DeviceModel(device=args["device"], power_w=float(args["power_w"]),
                           power_source=args.get("power_source", ""), fallback=fallback)

    cv = cross_validate(make, samples, ys)
    model = make().fit(samples, ys)
    if "measurements" in args:
        model.add_measurements(samples, ys)
    model.meta = {"source": source, "held_out": cv, "n_samples": len(ys)}
    model.save(args["out"])
    print(f"{args['device']}: {len(ys)} measured units from {source}")
    print(f"held-out (5-fold): {cv['within_10pct']:.1%} within +-10%, MAPE {cv['mape']:.1%}, "
          f"Spearman {cv['spearman']:.3f}")
    print(f"wrote {args['out']} (hash {model.hash})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
