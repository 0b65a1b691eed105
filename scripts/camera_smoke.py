"""Smoke benchmark of the camera-resolution space on 2 CPU cores: a search and an export of
`space=mobilenet_224` on an image folder of 96 px photos.

    python scripts/camera_smoke.py --work /tmp/camera          # ~20 min on 2 cores
    python scripts/camera_smoke.py --extrapolation-only        # seconds: which devices

The photos: Fashion-MNIST resized to ``--size`` px (bilinear) and written as RGB PNG files,
``--per-class`` training and ``--test-per-class`` test images per class, in class folders
named after the classes (``DIR/images/<class>/``, ``DIR/images/test/<class>/``). Then, as a
user types them:

    python -m search +device=rpi4 space=mobilenet_224 data=imagefolder data.root=DIR/images \
        search.n_trials=T proxy.train_images=N ...
    python -m search.export ... select=best out=DIR/export

Prints and writes ``scripts/results/camera/smoke.md`` and ``smoke.json``: the teacher's and
each trial's seconds (from the study's timestamps), the proxy's images per second, each
trial's prediction and whether it extrapolates, and the export's input shape, test accuracy
and latency measured here. ``--extrapolation-only`` writes ``extrapolation.md``: for each
shipped device, the share of 1,000 architectures of the space (224 px images, so every
resolution is drawn) whose prediction is flagged extrapolated, by resolution.
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

OUT = ROOT / "scripts" / "results" / "camera"


def write_photos(root: Path, size: int, per_class: int, test_per_class: int) -> None:
    from PIL import Image

    from search.data import FMNIST_CLASS_NAMES, load_fashion_mnist

    data = load_fashion_mnist(None)
    names = [n.replace("/", "-") for n in FMNIST_CLASS_NAMES]
    for split, x, y, n in (("", data.train_x, data.train_y, per_class),
                           ("test", data.test_x, data.test_y, test_per_class)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(y.numpy() == c)[:n]
            for i in idx:
                img = Image.fromarray(x[i, 0].numpy()).resize((size, size), Image.BILINEAR)
                img.convert("RGB").save(folder / f"{i}.png")


DEVICES = ("rpi4", "pixel3", "jetson_tx2", "note10", "pixel4", "pixel4_a55", "host",
           "bitfusion")


def extrapolation_table(n: int = 1000) -> str:
    """Per device and resolution, the share of sampled architectures priced extrapolated."""
    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel
    from search.config import space_options
    from spaces.space import RandomChoices, sample_arch

    space = space_options()["mobilenet_224"].for_input(224)
    archs = [sample_arch(RandomChoices(i), space, in_chans=3, input_size=224, num_classes=10,
                         bits=[32, 8]) for i in range(n)]
    res = sorted(set(space.resolution))
    lines = [f"`python scripts/camera_smoke.py --extrapolation-only`: {n} architectures of "
             "`space=mobilenet_224` (images of 224 px, bits 32 and 8), the share priced "
             "extrapolated.", "",
             "| device | all | " + " | ".join(f"{r} px" for r in res) + " |",
             "|---" * (len(res) + 2) + "|"]
    for device in DEVICES:
        flags = [p.provenance["extrapolated"] for p in
                 DeviceModel.load(MODEL_DIR / f"{device}.json").price_many(archs)]
        cells = []
        for r in res:
            sel = [f for f, a in zip(flags, archs) if a.resolution == r]
            cells.append(f"{np.mean(sel):.1%}")
        lines.append(f"| {device} | {np.mean(flags):.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cmd: list[str], log: Path) -> float:
    start = time.time()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        raise SystemExit(f"failed ({log}):\n" + log.read_text()[-3000:])
    return time.time() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work")
    parser.add_argument("--extrapolation-only", action="store_true")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--export-epochs", type=int, default=4)
    parser.add_argument("--device", default="rpi4")
    args = parser.parse_args(argv)
    if args.extrapolation_only:
        text = extrapolation_table()
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "extrapolation.md").write_text(text + "\n")
        return 0
    if not args.work:
        parser.error("--work DIR is needed (or --extrapolation-only)")
    work = Path(args.work).resolve()
    images = work / "images"
    if not images.exists():
        write_photos(images, args.size, args.per_class, args.test_per_class)
    common = [f"+device={args.device}", "space=mobilenet_224", "data=imagefolder",
              f"data.root={images}", "study.name=camera",
              f"storage.url=sqlite:///{work}/study.db", f"out_dir={work}/out",
              f"cache_dir={work}/cache", "data.val_images=500"]
    search_cmd = ["-m", "search", *common, f"search.n_trials={args.trials}",
                  f"proxy.train_images={args.train_images}", "proxy.val_images=500",
                  f"proxy.epochs={args.epochs}"]
    search_s = run(search_cmd, work / "search.log")
    export_s = run(["-m", "search.export", *common, "select=best",
                    f"export.epochs={args.export_epochs}", f"out={work}/export"],
                   work / "export.log")

    import optuna

    study = optuna.load_study(study_name="camera", storage=f"sqlite:///{work}/study.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    trained = args.train_images * args.epochs
    rows = []
    for t, s in zip(trials, seconds):
        arch = json.loads(t.user_attrs.get("arch_json", "{}"))
        prov = t.user_attrs.get("provenance", {})
        rows.append({"trial": t.number, "seconds": round(s, 1),
                     "resolution": arch.get("resolution"), "values": t.values,
                     "latency_ms": t.user_attrs.get("latency_ms"),
                     "proxy_accuracy": t.user_attrs.get("proxy_accuracy"),
                     "extrapolated": prov.get("extrapolated"), "latency": prov.get("latency")})
    (folder,) = (work / "export").glob("trial_*")
    metrics = json.loads((folder / "metrics.json").read_text())
    import onnx

    graph = onnx.load(str(folder / "model.onnx"))
    shape = [d.dim_value or d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    result = {
        "data": f"Fashion-MNIST resized to {args.size} px RGB, {args.per_class} training and "
                f"{args.test_per_class} test images per class",
        "cores": os.cpu_count(), "search_s": round(search_s, 1), "export_s": round(export_s, 1),
        "trial_s_median": round(float(np.median(seconds)), 1),
        "proxy_images_per_s": round(trained / float(np.median(seconds)), 1),
        "proxy": {"train_images": args.train_images, "epochs": args.epochs},
        "trials": rows, "export": {"trial": metrics.get("trial"), "input": shape,
                                   "arch_id": metrics.get("arch_id"),
                                   "test_accuracy": metrics.get("test_accuracy"),
                                   "measured_here": metrics.get("measured_here"),
                                   "predicted": metrics.get("predicted")},
    }
    lines = ["# Camera-resolution smoke benchmark", "",
             f"`python scripts/camera_smoke.py --work DIR` on {os.cpu_count()} CPU cores: "
             f"{result['data']}; `space=mobilenet_224 +device={args.device}`, {args.trials} "
             f"trials of the distilled proxy at `proxy.train_images={args.train_images} "
             f"proxy.epochs={args.epochs}`, then `search.export select=best "
             f"export.epochs={args.export_epochs}`.", "",
             f"- search: {search_s:.0f} s in all (teacher trained once included); a trial: "
             f"median {result['trial_s_median']:.0f} s, "
             f"{result['proxy_images_per_s']:.0f} training images per second",
             f"- export: {export_s:.0f} s; the ONNX input is {shape}; test accuracy "
             f"{json.dumps(metrics.get('test_accuracy'))}", "",
             f"| trial | seconds | resolution | proxy accuracy | {args.device} ms | "
             "extrapolated | latency from |", "|---|---|---|---|---|---|---|"]
    def pct(v) -> str:
        return "" if v is None else f"{v:.1%}"

    lines += [f"| {r['trial']} | {r['seconds']} | {r['resolution']} | "
              f"{pct(r['proxy_accuracy'])} | {r['latency_ms']:.2f} | {r['extrapolated']} | "
              f"{r['latency']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "smoke.md").write_text(text + "\n")
    (OUT / "smoke.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
