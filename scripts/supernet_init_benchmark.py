"""Does starting the export's training from the supernet's weights help?

    python scripts/supernet_init_benchmark.py                  # 4 architectures, seed 0
    python scripts/supernet_init_benchmark.py --archs 8 --seeds 0 1
    python scripts/supernet_init_benchmark.py --report         # the table from stored rows

For architectures of ``scripts/results/proxy/archs.json`` (evenly spaced along their predicted
rpi4 latency), each trained with the export recipe (``python -m search.export``'s defaults:
``export.epochs`` of distillation from the cached teacher over the training split, dense for
half the steps, then pruned and fine-tuned with fake quantization):

- ``scratch``: from a fresh initialisation, as the export trains today;
- ``supernet``: the same recipe, its dense phase starting from the weights the default
  supernet (the one ``proxy=supernet`` scores with: shipped, or trained once and cached) holds
  for the architecture's dense widths (:meth:`spaces.supernet.SuperNet.extract`);
- ``supernet_half``: from the supernet's weights with half the epochs (does it save time?);
- ``pruned``: the recipe's epochs at the pruned widths from the start (no dense phase), from
  a fresh initialisation: the control for
- ``supernet_pruned``: the same, from the weights of the sub-network the supernet scored;
- ``supernet_only``: the supernet's sub-network itself, batch norm recalibrated, no training.

Test accuracy is the model's as deployed (pruned, fake-quantized at its bits, in torch), on
the 10,000 test images. Rows are appended to ``scripts/results/supernet/init.csv`` as they
finish (a re-run skips the finished ones); the table goes to ``init.md`` and the console.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.supernet_benchmark import OUT, PROXY, compose, prepared  # noqa: E402

ARMS = ("scratch", "supernet", "supernet_half", "pruned", "supernet_pruned", "supernet_only")
FIELDS = ["arch_id", "seed", "arm", "epochs", "test_accuracy", "train_seconds",
          "rpi4_latency_ms"]


def chosen(n: int) -> list[dict]:
    """``n`` of the proxy benchmark's architectures, evenly spaced along their latency order."""
    archs = json.loads((PROXY / "archs.json").read_text())["archs"]
    step = len(archs) / n
    return [archs[int(step * (i + 0.5))] for i in range(n)]


def run(args: argparse.Namespace) -> None:
    import torch

    from search.data import to_float
    from search.export import final_recipe
    from search.proxy import train_candidate
    from search.train import accuracy, predict_logits
    from spaces.arch import Arch

    cfg = compose(args.overrides)
    ready = prepared(cfg, "cpu")
    data, net, path, dataset, teacher = (ready.data, ready.net, ready.path, ready.dataset,
                                         ready.teacher)
    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    x, y = dataset.train_x[train_idx], dataset.train_y[train_idx]
    soft = teacher.logits(train_idx)
    test_x, test_y = dataset.test_x, dataset.test_y
    recipe = final_recipe(cfg)
    half = dataclasses.replace(recipe, epochs=recipe.epochs / 2)
    calib_x = data.train_x[:cfg.proxy.supernet.calibration_images]
    print(f"supernet {path}; export recipe: {recipe.epochs} epochs, batch {recipe.batch}, "
          f"lr {recipe.lr}", flush=True)

    out = Path(args.out) / "init.csv"
    done = set()
    if out.exists():
        done = {(r["arch_id"], int(r["seed"]), r["arm"]) for r in csv.DictReader(open(out))}
    new = not out.exists()
    with open(out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for entry in chosen(args.archs):
            arch = Arch.from_json(json.dumps(entry["arch"]))
            for seed in args.seeds:
                for arm in args.arms:
                    if (arch.arch_id, seed, arm) in done:
                        continue
                    start = time.time()
                    if arm == "supernet_only":
                        if seed != args.seeds[0]:
                            continue  # no training: the same for every seed
                        weights = net.recalibrate(arch, [to_float(calib_x[i:i + 500]) for i in
                                                         range(0, len(calib_x), 500)])
                        net.eval()
                        with torch.no_grad():
                            logits = torch.cat([net.run(arch, to_float(test_x[i:i + 1000]),
                                                        weights)
                                                for i in range(0, len(test_x), 1000)])
                        acc = accuracy(logits, test_y)
                        epochs = 0
                    else:
                        r = half if arm == "supernet_half" else recipe
                        pruned = arm in ("pruned", "supernet_pruned")
                        begin = (None if arm in ("scratch", "pruned") else
                                 net.extract(arch, pruned=pruned).state_dict())
                        model = train_candidate(arch, x, y, soft, r, seed=seed, start=begin,
                                                prune_at=0.0 if pruned else 0.5)
                        epochs = r.epochs
                        acc = accuracy(predict_logits(model.eval(), test_x), test_y)
                    seconds = time.time() - start
                    row = {"arch_id": arch.arch_id, "seed": seed, "arm": arm,
                           "epochs": epochs, "test_accuracy": round(acc, 5),
                           "train_seconds": round(seconds, 1),
                           "rpi4_latency_ms": entry["rpi4_latency_ms"]}
                    writer.writerow(row)
                    fh.flush()
                    print(f"{arch.arch_id} seed {seed} {arm}: {100 * acc:.2f}% "
                          f"({seconds:.0f} s)", flush=True)


# what each training is compared with: the same recipe from a fresh initialisation
CONTROL = {"supernet": "scratch", "supernet_half": "scratch", "pruned": "scratch",
           "supernet_pruned": "pruned", "supernet_only": "scratch"}


def report(out_dir: Path) -> str:
    rows = list(csv.DictReader(open(out_dir / "init.csv")))
    by = {(r["arch_id"], r["seed"], r["arm"]): r for r in rows}
    pairs = sorted({(r["arch_id"], r["seed"]) for r in rows if r["arm"] == "scratch"},
                   key=lambda p: (float(by[(*p, "scratch")]["rpi4_latency_ms"]), p[1]))
    lines = ["# Starting the export's training from the supernet's weights", "",
             "`python scripts/supernet_init_benchmark.py`: test accuracy (as deployed: pruned, "
             "fake-quantized, in torch) of architectures of `scripts/results/proxy/archs.json` "
             "trained with the export recipe from a fresh initialisation (`scratch`) and from "
             "the default supernet's weights; `pruned` and `supernet_pruned` train the pruned "
             "widths from the start (no dense phase); `supernet_only` is the recalibrated "
             "sub-network without training. Seconds on this machine's 2 CPU cores.", "",
             "| architecture | seed | rpi4 ms | " + " | ".join(ARMS) + " |",
             "|---|---|---|" + "---|" * len(ARMS)]
    for arch_id, seed in pairs:
        cells = []
        for arm in ARMS:
            r = by.get((arch_id, seed, arm))
            if r is None and arm == "supernet_only":  # no training: one row for every seed
                r = next((v for (a, _, m), v in by.items() if a == arch_id and m == arm), None)
            cells.append("" if r is None else
                         f"{100 * float(r['test_accuracy']):.2f}% ({float(r['epochs']):g} ep, "
                         f"{float(r['train_seconds']):.0f} s)")
        ms = by[(arch_id, seed, "scratch")]["rpi4_latency_ms"]
        lines.append(f"| {arch_id} | {seed} | {ms} | " + " | ".join(cells) + " |")
    lines += ["", "| training | against | mean change, points | better in | median seconds |",
              "|---|---|---|---|---|"]
    for arm in ARMS:
        secs = [float(r["train_seconds"]) for r in rows if r["arm"] == arm]
        if not secs:
            continue
        if arm == "scratch":
            lines.append(f"| scratch | | | | {statistics.median(secs):.0f} |")
            continue
        d = [100 * (float(by[(a, s, arm)]["test_accuracy"])
                    - float(by[(a, s, CONTROL[arm])]["test_accuracy"]))
             for a, s in pairs if (a, s, arm) in by and (a, s, CONTROL[arm]) in by]
        if arm == "supernet_only":  # against each seed's scratch training
            d = [100 * (float(r["test_accuracy"]) - float(by[(r["arch_id"], s, "scratch")][
                "test_accuracy"])) for r in rows if r["arm"] == arm
                 for a, s in pairs if a == r["arch_id"]]
        if d:
            lines.append(f"| {arm} | {CONTROL[arm]} | {statistics.mean(d):+.2f} (min "
                         f"{min(d):+.2f}, max {max(d):+.2f}) | {sum(v > 0 for v in d)} of "
                         f"{len(d)} | {statistics.median(secs):.0f} |")
    text = "\n".join(lines) + "\n"
    (out_dir / "init.md").write_text(text)
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=int, default=4, help="architectures (evenly spaced)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                        help="which trainings (default: all)")
    parser.add_argument("--out", default=str(OUT), help="the results folder")
    parser.add_argument("--report", action="store_true", help="the table from stored rows")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.report:
        run(args)
    elif not (Path(args.out) / "init.csv").is_file():
        parser.error(f"no {Path(args.out) / 'init.csv'} yet: run without --report first")
    print(report(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
