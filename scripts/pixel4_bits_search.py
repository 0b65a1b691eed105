"""Do the bits buy latency? The search on pixel4 with int8 priced from measurements, beside
the same search with int8 priced as fp32 (what every phone model did before).

    python scripts/pixel4_bits_search.py                 # 1,000 trials, seeds 0-2, zero-cost
    python scripts/pixel4_bits_search.py --trials 100 --seeds 0

Both searches run ``python -m search +device=... proxy=zero_cost search.n_trials=N seed=S``
for each seed, with storage of their own: ``pixel4`` as shipped, and ``pixel4_fp32int8``, a model
fitted on the same 70 CNNs' fp32 measurements alone (8-bit layers priced as fp32,
``modelled``), written for this run into ``./conf/device/`` of a scratch folder. For each
found front (the score against latency): its size, the share of its layers at 8 bits, its
latency range (as each search priced it, and as the measured-int8 model prices it), and what
8 bits buy its architectures: the median of (all layers at 8 bits) / (all at 32) latency under
the search's own model.
Writes ``scripts/results/latency/pixel4_bits_search.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "scripts" / "results" / "latency"
DATA = ROOT / "latency_models" / "data" / "mobile_cnn" / "tflite_cnn_e2e.csv"


def fp32_only_device(folder: Path) -> None:
    from latency_models.int8 import fp32_model
    from latency_models.sources import read_cnn

    samples, ys, _ = read_cnn(DATA, "pixel4|1large")
    model = fp32_model("pixel4_fp32int8", samples, ys)
    model.fallback = {"8": 32, "16": 32}
    model.power_w = 2.0
    (folder / "conf" / "device").mkdir(parents=True, exist_ok=True)
    model.save(folder / "pixel4_fp32int8.json")
    (folder / "conf" / "device" / "pixel4_fp32int8.yaml").write_text(
        "name: pixel4_fp32int8\ndescription: pixel4 fitted on fp32 only (int8 priced as "
        f"fp32)\nmodel: {folder / 'pixel4_fp32int8.json'}\nprovenance: scripts/"
        "pixel4_bits_search.py\n")


def front(study_db: Path, device: str) -> list[dict]:
    import optuna

    from spaces.arch import Arch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{study_db}"
    name = optuna.get_all_study_names(storage)[0]
    study = optuna.load_study(study_name=name, storage=storage)
    return [{"number": t.number, "values": list(t.values),
             "arch": Arch.from_json(t.user_attrs["arch_json"])} for t in study.best_trials]


def main(argv: list[str] | None = None) -> int:
    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel
    from spaces.arch import all_bits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default=".cache/edgenas/pixel4_bits")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fp32_only_device(work)
    measured = DeviceModel.load(MODEL_DIR / "pixel4.json")
    seeds = [int(x) for x in args.seeds.split(",")]
    result = {"command": f"python scripts/pixel4_bits_search.py --trials {args.trials} "
                         f"--seeds {args.seeds}", "searches": {}}
    for device in ("pixel4", "pixel4_fp32int8"):
        own = measured if device == "pixel4" else DeviceModel.load(work / f"{device}.json")
        runs = []
        for seed in seeds:
            db = work / f"{device}-s{seed}.db"
            if db.exists():
                db.unlink()
            start = time.time()
            subprocess.run([sys.executable, "-m", "search", f"+device={device}",
                            "proxy=zero_cost", f"search.n_trials={args.trials}",
                            f"storage.url=sqlite:///{db}", f"out_dir={work / device}",
                            f"seed={seed}"], cwd=work, check=True, stdout=subprocess.DEVNULL,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
            members = front(db, device)
            bits = [b for m in members for b in m["arch"].bits]
            priced = [measured.price(m["arch"]).latency_ms for m in members]
            ratio = [own.price(all_bits(m["arch"], 8)).latency_ms
                     / own.price(all_bits(m["arch"], 32)).latency_ms for m in members]
            runs.append({
                "seed": seed, "seconds": round(time.time() - start, 1),
                "front_size": len(members),
                "share_8bit_layers": round(float(np.mean([b <= 8 for b in bits])), 4),
                "latency_ms_as_searched": [round(min(m["values"][1] for m in members), 3),
                                           round(max(m["values"][1] for m in members), 3)],
                "latency_ms_measured_int8_model": [round(min(priced), 3),
                                                   round(max(priced), 3)],
                "int8_over_fp32_median": round(float(np.median(ratio)), 4)})
            print(device, runs[-1], flush=True)
        result["searches"][device] = runs
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pixel4_bits_search.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Do the bits buy latency on pixel4?", "", f"`{result['command']}`: "
             "zero-cost proxy (it does not see the bits), TPE, the default space (28-32 px) "
             "and Fashion-MNIST; the front is each study's Pareto set (score against "
             "predicted latency). One row per seed.", "",
             "| int8 priced | seed | front | 8-bit layers in the front | 8 bits / 32 bits "
             "latency, front median | latency as searched (ms) | latency, measured-int8 "
             "model (ms) |", "|---|---|---|---|---|---|---|"]
    for device, runs in result["searches"].items():
        label = "from int8 measurements" if device == "pixel4" else "as fp32"
        for r in runs:
            lo, hi = r["latency_ms_as_searched"]
            mlo, mhi = r["latency_ms_measured_int8_model"]
            lines.append(f"| {label} (`{device}`) | {r['seed']} | {r['front_size']} | "
                         f"{r['share_8bit_layers']:.0%} | {r['int8_over_fp32_median']:.2f} | "
                         f"{lo}-{hi} | {mlo}-{mhi} |")
    text = "\n".join(lines) + "\n"
    (OUT / "pixel4_bits_search.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
