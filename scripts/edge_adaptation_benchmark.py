"""Adaptation on the edge: a search's front fine-tuned on a shifted "device camera".

    python scripts/edge_adaptation_benchmark.py --work DIR [--models 4] [--epochs 5] \
        [SEARCH OVERRIDES...]

1. The search named by the overrides (default: the quick start's, ``+device=rpi4`` on
   Fashion-MNIST; its study is resumed or run) gives its Pareto front; up to ``--models``
   members, spread over latency, are exported with ``python -m search.export`` (their final
   training, ``export.epochs``).
2. The camera: Fashion-MNIST's test split as a device would see it: rotated 15 degrees,
   blurred (Gaussian, radius 1), intensities x0.6 with a black level of +10 (a tilted, soft,
   dim camera whose black is not black). A seeded half is the fine-tuning split
   (DIR/camera/<class>/), the other half held out (DIR/camera/test/<class>/).
3. Each exported member is fine-tuned with ``python -m search.finetune`` (1 thread, each
   scheme): test accuracy before (the original export on the shifted held-out half) and
   after, the measured and predicted peak memory of a step, seconds per epoch. The accuracy
   lost to the shift is the export's own Fashion-MNIST test accuracy minus its accuracy on
   the shifted images; a scheme recovers (after - before) / lost of it.

Writes ``DIR/adaptation.json`` and, with ``--results NAME``, copies the table and figures to
``scripts/results/edge_training/NAME.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "scripts" / "results" / "edge_training"
SHIFT = ("rotated 15 degrees, Gaussian blur radius 1, intensities x0.6 and a black level of "
         "+10 (of 255)")


def shifted_camera(folder: Path, seed: int = 0) -> None:
    """Write the shifted test split as an image folder (fine-tuning half, held-out half)."""
    from PIL import Image, ImageFilter

    from search.data import load_fashion_mnist

    if (folder / "test").is_dir():
        return
    data = load_fashion_mnist(None)
    x, y = data.test_x[:, 0].numpy(), data.test_y.numpy()
    order = np.random.default_rng(seed).permutation(len(y))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rank, i in enumerate(order):
        img = Image.fromarray(x[i]).rotate(15, resample=Image.BILINEAR)
        img = img.filter(ImageFilter.GaussianBlur(1))
        a = np.asarray(img, dtype=np.float32)
        a = np.clip(a * 0.6 + 10, 0, 255).astype(np.uint8)
        part = tmp / "test" if rank % 2 else tmp
        (part / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(part / str(y[i]) / f"{i}.png")
    tmp.rename(folder)


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")
    return result


def front_members(overrides: list[str], n: int) -> list[int]:
    """Up to ``n`` trial numbers of the study's front, spread over predicted latency."""
    import optuna
    from hydra import compose, initialize_config_dir

    from search.config import CONF_DIR, load
    from search.export import load_study, select_trials

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = load(compose(config_name="config", overrides=overrides + ["select=pareto"]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = sorted(select_trials(cfg, load_study(cfg)),
                    key=lambda t: t.user_attrs["latency_ms"])
    if len(trials) <= n:
        return [t.number for t in trials]
    picks = np.linspace(0, len(trials) - 1, n).round().astype(int)
    return [trials[i].number for i in sorted(set(picks))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--schemes", default="head,bias,last:2,all")
    ap.add_argument("--results", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    work = args.work.resolve()
    overrides = args.overrides or ["+device=rpi4"]
    start = time.time()
    run("-m", "search", *overrides)  # resumes a finished study at once
    members = front_members(overrides, args.models)
    exports = work / "export"
    for number in members:
        if not (exports / f"trial_{number}" / "weights.safetensors").is_file():
            run("-m", "search.export", *overrides, f"select={number}", f"out={exports}")
    camera = work / "camera"
    shifted_camera(camera)
    rows = []
    for number in members:
        source = exports / f"trial_{number}"
        m = json.loads((source / "metrics.json").read_text())
        clean = m["test_accuracy"]["model.onnx"]
        for scheme in args.schemes.split(","):
            out = work / "tuned" / f"trial_{number}-{scheme.replace(':', '')}"
            shutil.rmtree(out, ignore_errors=True)
            run("-m", "search.finetune", f"model={source}", "data=imagefolder",
                f"data.root={camera}", f"update={scheme}", f"epochs={args.epochs}",
                f"out={out}", "finetune.threads=1")
            t = json.loads((out / "metrics.json").read_text())
            ft, acc = t["finetuning"], t["test_accuracy"]
            before, after = acc["before"]["model.onnx"], acc["after"]["model.onnx"]
            lost = clean - before
            rows.append({
                "trial": number, "scheme": scheme, "clean": clean, "before": before,
                "after": after, "after_int8": acc["after"]["model.int8.onnx"],
                "recovered": (after - before) / lost if lost > 0 else None,
                "measured_kib": ft["measured_peak_kib"],
                "predicted_kib": ft["predicted_train_memory_kib"],
                "s_per_epoch": statistics.median(ft["seconds_per_epoch"]),
                "latency_ms": m["predicted"]["model.onnx"]["latency_ms"],
                "images": ft["images"]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    summary = []
    for number in members:
        by = {r["scheme"]: r for r in rows if r["trial"] == number}
        if "bias" in by and "all" in by:
            summary.append({"trial": number,
                            "bias_recovered": by["bias"]["recovered"],
                            "bias_over_all_memory": by["bias"]["measured_kib"]
                            / by["all"]["measured_kib"]})
    result = {"command": "python scripts/edge_adaptation_benchmark.py --work DIR "
                         f"--models {args.models} --epochs {args.epochs} "
                         f"--schemes {args.schemes} {' '.join(overrides)}",
              "shift": SHIFT, "epochs": args.epochs, "threads": 1,
              "seconds": round(time.time() - start, 1), "rows": rows, "summary": summary}
    (work / "adaptation.json").write_text(json.dumps(result, indent=1))
    images = rows[0]["images"] if rows else {"train": 0, "test": 0}
    lines = [f"`{result['command']}` ({result['seconds'] / 60:.0f} min on 2 cores, the "
             "search and exports included; fine-tuning on 1 thread). Camera: "
             f"{SHIFT}; {images['train']} images to fine-tune on, {images['test']} held out. "
             f"{args.epochs} epochs at batch 32, SGD (lr 0.01, momentum 0.9, cosine), batch "
             "norms folded. Accuracies are onnxruntime's (fp32 file unless marked).", ""]
    lines += table(result)
    print("\n".join(lines))
    if args.results:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.results}.json").write_text(json.dumps(result, indent=1))
        (RESULTS / f"{args.results}.md").write_text("\n".join(lines) + "\n")
    return result


def table(result: dict) -> list[str]:
    lines = ["| trial | scheme | clean | shifted, before | after (fp32) | after (int8) | "
             "recovered | step memory KiB measured / predicted | s per epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rec = "-" if r["recovered"] is None else f"{100 * r['recovered']:.0f}%"
        lines.append(f"| {r['trial']} | {r['scheme']} | {100 * r['clean']:.2f}% | "
                     f"{100 * r['before']:.2f}% | {100 * r['after']:.2f}% | "
                     f"{100 * r['after_int8']:.2f}% | {rec} | {r['measured_kib']:,.0f} / "
                     f"{r['predicted_kib']:,.0f} | {r['s_per_epoch']:.2f} |")
    lines += ["", "| trial | bias: share of the lost accuracy recovered | bias / all step "
              "memory |", "|---|---|---|"]
    for s in result["summary"]:
        rec = "-" if s["bias_recovered"] is None else f"{100 * s['bias_recovered']:.0f}%"
        lines.append(f"| {s['trial']} | {rec} | {s['bias_over_all_memory']:.3f} |")
    return lines


if __name__ == "__main__":
    main()
