"""How much of the host model's error is measurement noise, and how far the host model carries.

    python scripts/latency_host_repeat.py           # 200 architectures, two sessions, ~4 min
    python scripts/latency_host_repeat.py --n 50

Measures benchmark 1's held-out architectures (``scripts/latency_host_benchmark.py``: seed 0,
fp32 and mixed int8, 1 thread pinned to one core, ``--rounds`` interleaved rounds of 20 runs,
median; 21 as the committed measurements)
twice on this machine, one session after the other, and compares:

- session 1 against session 2: the repeatability of a measurement, the ceiling of any
  model's "within +-10%" on one machine;
- session 1 against the committed measurements (``scripts/results/latency/host_test_200.csv``,
  taken on the machine the shipped ``host`` model was profiled on): how far one machine's
  numbers carry to another that reports the same CPU;
- the shipped ``host`` model against this machine's session 1 and against the committed
  measurements;
- ``host`` calibrated to this machine with ``--calibrate`` other networks (seed 7), as
  ``python -m latency_models.fit measurements=... base=latency_models/data/host.json`` does,
  against session 1.

Prints and writes ``scripts/results/latency/host_repeat.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.devices import MODEL_DIR  # noqa: E402
from latency_models.fit import accuracy  # noqa: E402
from latency_models.model import DeviceModel  # noqa: E402
from latency_models.profile import cpu_name, profile  # noqa: E402
from latency_models.sources import read_profile, read_profile_units  # noqa: E402
from spaces.arch import Arch  # noqa: E402

OUT = ROOT / "scripts" / "results" / "latency"
COMMITTED = OUT / "host_test_200.csv"
PRECISIONS = ("fp32", "mixed-int8")


def read(path: Path) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as f:
        return {(r["arch_id"], r["precision"]): r for r in csv.DictReader(f)}


def compare(x: dict, y: dict, precision: str) -> dict:
    """``x`` against ``y`` (ms by key) on the keys both have, for one precision."""
    keys = sorted(k for k in x if k[1] == precision and k in y)
    u, v = np.array([x[k] for k in keys]), np.array([y[k] for k in keys])
    return dict(accuracy(u, v), median_ratio=float(np.median(u / v)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calibrate", type=int, default=20,
                        help="networks measured to calibrate host to this machine")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    sessions, seconds = [], []
    model = DeviceModel.load(MODEL_DIR / "host.json")
    with tempfile.TemporaryDirectory() as tmp:
        for i in (1, 2):
            path = Path(tmp) / f"session{i}.csv"
            start = time.time()
            profile(n=args.n, seed=0, out=str(path), threads=1, rounds=args.rounds, runs=20)
            seconds.append(time.time() - start)
            sessions.append(read(path))
        cal_csv = Path(tmp) / "calibration.csv"
        profile(n=args.calibrate, seed=7, out=str(cal_csv), threads=1, rounds=args.rounds, runs=20)
        samples, ys = read_profile(cal_csv)
        calibrated = DeviceModel("host-calibrated", model.power_w).transfer(
            model, samples, ys, units=read_profile_units(cal_csv, tuple(model.native_bits)))
    ms = [{k: float(r["median_ms"]) for k, r in s.items()} for s in sessions]
    committed = {k: float(r["median_ms"]) for k, r in read(COMMITTED).items()}
    predicted = {k: model.price(Arch.from_json(r["arch_json"])).latency_ms
                 for k, r in sessions[0].items()}
    recalibrated = {k: calibrated.price(Arch.from_json(r["arch_json"])).latency_ms
                    for k, r in sessions[0].items()}
    pairs = [("session 1 against session 2 (this machine)", ms[0], ms[1]),
             ("session 1 here against the committed measurements", ms[0], committed),
             ("shipped host model against session 1 here", predicted, ms[0]),
             ("shipped host model against the committed measurements", predicted, committed),
             (f"host calibrated here with {args.calibrate} networks against session 1",
              recalibrated, ms[0])]
    lines = ["# Host latency: measurement repeatability and machine to machine", "",
             f"`python scripts/latency_host_repeat.py --n {args.n}` on {cpu_name()} "
             f"({os.cpu_count()} cores), sessions of {seconds[0]:.0f} s and {seconds[1]:.0f} s "
             "(export and measurement of every architecture in fp32 and mixed int8). "
             "`median ratio` is the first column's latency over the second's.", "",
             "| comparison | precision | n | within +-10% | MAPE | Spearman | median ratio |",
             "|---|---|---|---|---|---|---|"]
    for name, x, y in pairs:
        for precision in PRECISIONS:
            c = compare(x, y, precision)
            lines.append(f"| {name} | {precision} | {c['n']} | {c['within_10pct']:.1%} | "
                         f"{c['mape']:.1%} | {c['spearman']:.3f} | {c['median_ratio']:.3f} |")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "host_repeat.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
