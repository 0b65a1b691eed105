"""Benchmark 3 of the latency models: FBNet blocks held out by input shape.

    python scripts/latency_fbnet_holdout.py

HW-NAS-Bench measured 192 FBNet blocks on each device at the shapes of a 224x224 (ImageNet)
network and of a 32x32 (CIFAR) network. The op-level model is fitted on one set of shapes and
tested on the other, both ways, for Raspberry Pi 4, Pixel 3 and Jetson TX2 latency and Jetson
TX2 energy. The baseline is a FLOPs-only linear fit (a * MACs + b, same relative-error
weighting) on the same rows. Prints a Markdown table and writes it, with the per-row
predictions, to ``scripts/results/latency/``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.fit import flops_fit, spearman  # noqa: E402
from latency_models.model import DeviceModel  # noqa: E402
from latency_models.sources import read_fbnet  # noqa: E402

DATA = ROOT / "latency_models" / "data" / "hwnasbench_fbnet_blocks.csv"
OUT = ROOT / "scripts" / "results" / "latency"
TARGETS = (("raspi4_latency", "Raspberry Pi 4 latency", "latency"),
           ("pixel3_latency", "Pixel 3 latency", "latency"),
           ("edgegpu_latency", "Jetson TX2 latency", "latency"),
           ("edgegpu_latency", "Jetson TX2 energy", "energy"))


def shape_set(key: str) -> str:
    """'224' for the blocks of the 224x224 network, '32' for those of the 32x32 one."""
    if key.startswith("FC_"):
        return "224" if "Cin1984" in key else "32"
    h = int(key.split("_H", 1)[1].split("_", 1)[0])
    return "224" if h in (224, 112, 56, 28, 14, 7) else "32"


def scores(pred: np.ndarray, y: np.ndarray) -> dict:
    err = np.abs(pred - y) / y
    return {"within_10pct": float(np.mean(err <= 0.10)), "mape": float(np.mean(err)),
            "spearman": spearman(pred, y)}


def run(column: str, what: str) -> list[dict]:
    samples, latency, keys, energy = read_fbnet(
        DATA, column, "edgegpu_energy" if what == "energy" else None)
    y = np.asarray(energy if what == "energy" else latency)
    sets = np.array([shape_set(k) for k in keys])
    macs = np.array([sum(op.macs for op in ops) for ops in samples], dtype=float)
    rows = []
    for train_set, test_set in (("224", "32"), ("32", "224")):
        tr, te = np.flatnonzero(sets == train_set), np.flatnonzero(sets == test_set)
        model = DeviceModel("fbnet", power_w=1.0)
        if what == "energy":
            model.fit([samples[i] for i in tr], [latency[i] for i in tr], energy_mj=y[tr])
            pred = np.array([model.price(samples[i]).energy_mj for i in te])
        else:
            model.fit([samples[i] for i in tr], y[tr])
            pred = np.array([model.price(samples[i]).latency_ms for i in te])
        a, b = flops_fit(macs[tr], y[tr])
        base = a * macs[te] / 1e6 + b
        rows.append({"column": column, "train": train_set, "test": test_set,
                     "n_train": len(tr), "n_test": len(te), "model": scores(pred, y[te]),
                     "flops": scores(base, y[te]),
                     "rows": [(keys[i], y[i], p, q) for i, p, q in zip(te, pred, base)]})
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    lines = ["| target | fit on -> test on | n | op model within 10% | op model MAPE | "
             "op model Spearman | FLOPs within 10% | FLOPs MAPE | FLOPs Spearman |",
             "|---|---|---|---|---|---|---|---|---|"]
    detail = []
    for column, name, what in TARGETS:
        for r in run(column, what):
            m, f = r["model"], r["flops"]
            lines.append(f"| {name} | {r['train']} -> {r['test']} | {r['n_test']} | "
                         f"{m['within_10pct']:.1%} | {m['mape']:.1%} | {m['spearman']:.3f} | "
                         f"{f['within_10pct']:.1%} | {f['mape']:.1%} | {f['spearman']:.3f} |")
            detail += [{"target": name, "train": r["train"], "key": k, "measured": yv,
                        "op_model": p, "flops": q} for k, yv, p, q in r["rows"]]
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fbnet_holdout.md").write_text(
        "# FBNet blocks held out by shape\n\n`python scripts/latency_fbnet_holdout.py`; "
        "224 = blocks of the 224x224 network (112..7 px), 32 = blocks of the 32x32 network "
        "(32..4 px). Latency in ms, energy in mJ (HW-NAS-Bench, measured).\n\n" + table + "\n")
    with open(OUT / "fbnet_holdout.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(detail[0]))
        writer.writeheader()
        writer.writerows(detail)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
