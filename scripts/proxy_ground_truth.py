"""Ground truth for the accuracy-proxy benchmark: architectures across the space's latency
range, each trained to convergence with the export recipe (distillation from the teacher,
dense then pruned, fake quantization at its bit-widths) on the Fashion-MNIST training split and
evaluated on the test set; some of them with several seeds, for the noise ceiling.

    python scripts/proxy_ground_truth.py select            # the architectures (CPU, seconds)
    python scripts/proxy_ground_truth.py train             # the trainings (GPU if present)

``select`` samples 4,000 architectures from the default space, prices them for ``rpi4`` and
keeps ``--n`` at evenly spaced quantiles of predicted latency, so the set spans the latency
range (``scripts/results/proxy/archs.json``). ``train`` trains every architecture with seed 0
and the first ``--seeded`` of them (spread over the latency range) with ``--seeds`` seeds,
in ``--workers`` parallel processes, and writes
``scripts/results/proxy/ground_truth.csv`` (arch_id, arch_json, seed, test_accuracy, ...)
and ``ground_truth.recipe.json`` (the recipe, teacher, data, machine). Finished rows are kept
in ``ground_truth.parts/``: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("EDGENAS_GT_OUT", ROOT / "scripts" / "results" / "proxy"))
ARCHS = ROOT / "scripts" / "results" / "proxy" / "archs.json"
COLUMNS = ["arch_id", "seed", "test_accuracy", "val_accuracy", "params", "macs",
           "rpi4_latency_ms", "bits", "prune", "train_seconds", "device", "arch_json"]


def select(n: int, seed: int, pool: int = 4000) -> None:
    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel
    from latency_models.ops import arch_ops
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    model = DeviceModel.load(MODEL_DIR / "rpi4.json")
    priced = []
    seen = set()
    for i in range(pool):
        arch = sample_arch(RandomChoices(seed * 1_000_003 + i), SpaceConfig(), in_chans=1,
                           input_size=28, num_classes=10, bits=[32, 8])
        if arch.arch_id in seen:
            continue
        seen.add(arch.arch_id)
        priced.append((model.price(arch_ops(arch)).latency_ms, arch))
    priced.sort(key=lambda p: p[0])
    picks = [priced[round(k * (len(priced) - 1) / (n - 1))] for k in range(n)]
    OUT.mkdir(parents=True, exist_ok=True)
    ARCHS.write_text(json.dumps({
        "about": f"{n} architectures at evenly spaced quantiles of predicted rpi4 latency "
                 f"among {len(priced)} sampled uniformly from the default space (seed {seed})",
        "archs": [{"arch_id": a.arch_id, "rpi4_latency_ms": round(ms, 4),
                   "arch": json.loads(a.to_json())} for ms, a in picks]}, indent=1))
    print(f"{ARCHS}: {n} architectures, predicted rpi4 latency "
          f"{picks[0][0]:.3f}-{picks[-1][0]:.3f} ms")


def _recipe(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "temperature": 4.0,
            "alpha": 0.7, "weight_decay": 4e-5, "schedule": "cosine, SGD Nesterov 0.9",
            "prune": "dense for half the steps, then L1 structured pruning, fine-tune",
            "quantization": "fake quantization of the layers below 32 bits (STE)",
            "train_split": "Fashion-MNIST training set minus 5,000 validation images "
                           "(data.val_images, seed 0)",
            "val": "those 5,000 validation images", "test": "the 10,000 test images"}


def _load(args: argparse.Namespace):
    """Dataset, training indices, teacher logits (computed once, on the device)."""
    import torch

    from search.data import load_fashion_mnist
    from search.proxy_config import TeacherConfig
    from search.teacher import TeacherCache
    from search.train import predict_logits

    ds = load_fashion_mnist(args.data_root)
    teacher = TeacherCache(TeacherConfig(), ds, args.cache_dir, 5000, 0)
    train_idx, val_idx = ds.split(5000, 0)
    return ds, teacher, train_idx, val_idx, torch, predict_logits


def _worker(rank: int, jobs: list[tuple[int, int]], args: argparse.Namespace,
            logits_path: str, parts: str) -> None:
    import torch
    from safetensors.torch import load_file

    from search.data import load_fashion_mnist
    from search.proxy import train_candidate
    from search.train import Recipe, accuracy, predict_logits
    from spaces.arch import Arch

    torch.set_num_threads(1)
    dev = torch.device(args.device)
    ds = load_fashion_mnist(args.data_root)
    train_idx, val_idx = ds.split(5000, 0)
    soft = load_file(logits_path)["logits"].to(dev)
    x, y = ds.train_x[train_idx].to(dev), ds.train_y[train_idx].to(dev)
    vx, vy = ds.train_x[val_idx].to(dev), ds.train_y[val_idx].to(dev)
    tx, ty = ds.test_x.to(dev), ds.test_y.to(dev)
    archs = json.loads(ARCHS.read_text())["archs"]
    recipe = Recipe(epochs=args.epochs, batch=args.batch, lr=args.lr)
    for i, seed in jobs:
        part = Path(parts) / f"{i:03d}-{seed}.json"
        if part.exists():
            continue
        entry = archs[i]
        arch = Arch.from_json(json.dumps(entry["arch"]))
        start = time.time()
        model = train_candidate(arch, x, y, soft, recipe, seed=seed)
        seconds = time.time() - start
        row = {"arch_id": arch.arch_id, "seed": seed,
               "test_accuracy": round(accuracy(predict_logits(model, tx), ty), 5),
               "val_accuracy": round(accuracy(predict_logits(model, vx), vy), 5),
               "params": arch.params(), "macs": arch.macs(),
               "rpi4_latency_ms": entry["rpi4_latency_ms"],
               "bits": " ".join(f"{b}b:{list(arch.bits).count(b)}"
                                for b in sorted(set(arch.bits), reverse=True)),
               "prune": " ".join(f"{s.prune_ratio:g}" for s in arch.stages),
               "train_seconds": round(seconds, 1), "device": str(dev),
               "arch_json": arch.to_json(indent=None)}
        tmp = part.with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        tmp.rename(part)
        print(f"[{rank}] arch {i} seed {seed}: test {100 * row['test_accuracy']:.2f}% "
              f"in {seconds:.0f} s", flush=True)


def train(args: argparse.Namespace) -> None:
    import multiprocessing as mp

    from safetensors.torch import save_file

    ds, teacher, train_idx, _, torch, predict_logits = _load(args)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(args.device)
    parts = OUT / "ground_truth.parts"
    parts.mkdir(parents=True, exist_ok=True)
    model = teacher.model().to(dev)  # trained once and cached (or carried from a cache)
    logits_path = parts / "teacher_logits.safetensors"
    if not logits_path.exists():
        soft = predict_logits(model, ds.train_x[train_idx].to(dev), batch=2000).half().cpu()
        save_file({"logits": soft.contiguous()}, str(logits_path))
    archs = json.loads(ARCHS.read_text())["archs"][:args.limit]
    n = len(archs)
    seeded = [round(k * (n - 1) / max(1, args.seeded - 1)) for k in range(args.seeded)]
    jobs = [(i, 0) for i in range(n)]
    jobs += [(i, s) for i in seeded for s in range(1, args.seeds)]
    jobs = [j for j in jobs if not (parts / f"{j[0]:03d}-{j[1]}.json").exists()]
    # Largest first, dealt round-robin: the workers finish together.
    jobs.sort(key=lambda j: -archs[j[0]]["rpi4_latency_ms"])
    print(f"{len(jobs)} trainings on {dev} in {args.workers} processes", flush=True)
    start = time.time()
    if jobs:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, jobs[r::args.workers], args,
                                                   str(logits_path), str(parts)))
                 for r in range(min(args.workers, len(jobs)))]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    wall = time.time() - start
    collect(args, wall, teacher.meta, torch, dev)


def collect(args: argparse.Namespace, wall: float | None = None, meta: dict | None = None,
            torch=None, dev=None) -> None:
    """Write ground_truth.csv from the finished trainings (also after an interrupted run)."""
    parts = OUT / "ground_truth.parts"
    rows = [json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))]
    with open(OUT / "ground_truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["rpi4_latency_ms"], r["seed"])))
    if meta is None:  # collect only: keep what the training run recorded
        print(f"{len(rows)} rows in {OUT / 'ground_truth.csv'}")
        return
    (OUT / "ground_truth.recipe.json").write_text(json.dumps({
        "recipe": _recipe(args), "teacher": {k: meta.get(k) for k in
                                             ("model", "test_accuracy", "val_accuracy")},
        "architectures": "scripts/results/proxy/archs.json", "rows": len(rows),
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor(),
        "workers": args.workers, "wall_seconds_this_run": round(wall, 1),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "command": "python scripts/proxy_ground_truth.py " + " ".join(sys.argv[1:])},
        indent=1))
    print(f"{len(rows)} rows in {OUT / 'ground_truth.csv'}; this run {wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["select", "train", "collect"])
    parser.add_argument("--n", type=int, default=48, help="architectures (select)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the seeded subset")
    parser.add_argument("--seeded", type=int, default=8, help="architectures with --seeds")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "edgenas"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N (smoke)")
    args = parser.parse_args()
    if args.action == "select":
        select(args.n, args.seed)
    elif args.action == "collect":
        collect(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
