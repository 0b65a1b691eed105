"""How well `python -m latency_models.calibrate` fits a device model to the machine at hand.

    python scripts/calibrate_benchmark.py                  # ~3 min: 1 thread
    python scripts/calibrate_benchmark.py --threads 1 2    # ~9 min: also onnxruntime at 2 threads

For each thread count: runs the command (``+device=host name=bench``, its defaults: 100
networks of seed 7) in a scratch folder, then measures 200 held-out architectures (seed 0, the
networks of ``scripts/latency_host_benchmark.py``; fp32 and mixed int8, 21 interleaved rounds,
1 thread pinned to one core as the command pins it) and compares against them:

- the shipped ``host`` model, uncalibrated;
- the calibrated model the command wrote;
- the calibration this project had before (``latency_models.fit measurements=... base=``
  with 20 networks, the network correction dropped), for reference.

At 2 threads the shipped model (profiled at 1 thread) meets a configuration it was never
measured in: a stand-in for a machine that differs in more than its speed.

Prints and writes ``scripts/results/latency/calibrate.md`` and ``calibrate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.calibrate import pinned  # noqa: E402
from latency_models.devices import MODEL_DIR  # noqa: E402
from latency_models.fit import accuracy  # noqa: E402
from latency_models.model import DeviceModel  # noqa: E402
from latency_models.ops import arch_ops, arch_units  # noqa: E402
from latency_models.profile import cpu_name, profile  # noqa: E402
from latency_models.sources import read_profile_archs, read_rows  # noqa: E402

OUT = ROOT / "scripts" / "results" / "latency"
PRECISIONS = ("fp32", "mixed-int8")


def old_calibration(base: DeviceModel, measurements: Path, n: int) -> DeviceModel:
    """What ``latency_models.fit base=`` did before: the first ``n`` networks, transferred
    without the architectures (so without the base's network correction)."""
    rows = read_rows(measurements, ("arch_json", "median_ms", "precision"))
    net = np.cumsum([r["precision"] == "fp32" for r in rows])
    archs, ys = read_profile_archs(measurements)
    keep = [i for i in range(len(rows)) if net[i] <= n]
    return DeviceModel("old", base.power_w).transfer(
        base, [arch_ops(archs[i]) for i in keep], [ys[i] for i in keep],
        units=[arch_units(archs[i], tuple(base.native_bits)) for i in keep])


def scores(model: DeviceModel, archs: list, ys: np.ndarray, precision: np.ndarray) -> dict:
    pred = np.array([model.price(a).latency_ms for a in archs])
    out = {}
    for p in PRECISIONS:
        sel = precision == p
        out[p] = dict(accuracy(pred[sel], ys[sel]),
                      median_ratio=round(float(np.median(pred[sel] / ys[sel])), 4))
    return out


def run(threads: int, held_n: int, work: Path) -> dict:
    folder = work / f"t{threads}"
    folder.mkdir(parents=True)
    start = time.time()
    cmd = [sys.executable, "-m", "latency_models.calibrate", "+device=host", "name=bench",
           f"threads={threads}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    calib_s = time.time() - start
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode != 0:
        raise SystemExit(f"calibrate failed:\n{done.stdout}\n{done.stderr}")
    calibrated = DeviceModel.load(folder / "conf" / "device" / "bench.json")
    base = DeviceModel.load(MODEL_DIR / "host.json")
    held = folder / "held_out.csv"
    with pinned(threads):  # as the command measures
        profile(n=held_n, seed=0, out=str(held), threads=threads, rounds=21, runs=20)
    archs, ys = read_profile_archs(held)
    ys = np.asarray(ys)
    precision = np.array([r["precision"] for r in read_rows(held, ("precision",))])
    old = old_calibration(base, folder / "conf" / "device" / "bench.measurements.csv", 20)
    return {"threads": threads, "calibrate_s": round(calib_s, 1), "held_out_files": len(ys),
            "command_output": lines[-3:-1],  # the last: a scratch path
            "models": {"host (shipped, uncalibrated)": scores(base, archs, ys, precision),
                       "host calibrated (latency_models.calibrate)":
                           scores(calibrated, archs, ys, precision),
                       "before: fit base= with 20 networks": scores(old, archs, ys, precision)}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--held-out", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(t, args.held_out, Path(tmp)) for t in args.threads]
    lines = ["# Calibrating a device model to the machine at hand", "",
             f"`python scripts/calibrate_benchmark.py --threads "
             f"{' '.join(map(str, args.threads))}` on {cpu_name()} ({os.cpu_count()} cores). "
             "Each run: `python -m latency_models.calibrate +device=host name=bench "
             "threads=T` (100 networks of seed 7), then "
             f"{args.held_out} held-out architectures (seed 0) measured in fp32 and mixed "
             "int8. `median ratio`: predicted over measured.", "",
             "| threads | model | precision | n | within +-10% | MAPE | Spearman | "
             "median ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, per in r["models"].items():
            for p in PRECISIONS:
                c = per[p]
                lines.append(f"| {r['threads']} | {name} | {p} | {c['n']} | "
                             f"{c['within_10pct']:.1%} | {c['mape']:.1%} | "
                             f"{c['spearman']:.3f} | {c['median_ratio']:.3f} |")
    lines += [""] + [f"- {r['threads']} thread(s): the command took {r['calibrate_s']:.0f} s "
                     "and printed: " + " / ".join(f"`{x}`" for x in r["command_output"])
                     for r in results]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "calibrate.md").write_text(text + "\n")
    (OUT / "calibrate.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
