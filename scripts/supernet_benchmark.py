"""Benchmark of ``proxy=supernet``: its cost, and how well it ranks architectures.

    python scripts/supernet_benchmark.py            # train (or load) the supernet, then score
    python scripts/supernet_benchmark.py --report   # the tables from the stored scores only
    python scripts/supernet_benchmark.py --ship     # and copy the supernet into the package

1. Training: the supernet of the search's defaults (``+device=rpi4 proxy=supernet``,
   Fashion-MNIST, the cached teacher), trained exactly as the search trains it (the same
   function, the same cache), on this machine's CPU with ``search.threads`` threads (or
   ``--device cuda``); its wall time.
2. Rank quality: the 48 architectures of ``scripts/results/proxy/`` scored by their
   sub-networks, against their ground truth (``ground_truth.csv``: seed-0 test accuracy after
   full training), Kendall tau and Spearman rho, overall and within the ground truth's top
   quarter, beside the proxies of ``scripts/results/proxy/scores.csv`` (the distilled
   proxy's fidelity, fidelity+naswot with the search's calibration, NASWOT, MACs). The scores
   go to ``scripts/results/supernet/scores.csv`` (``arch_id,supernet,...``: ``supernet`` is
   what the search uses, ``proxy.score``'s default).
3. Scoring cost: seconds per trial (batch-norm recalibration and validation) over ``--n``
   architectures sampled from the space, median and spread.

Figures are printed and written to ``scripts/results/supernet/report.md`` and
``report.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "scripts" / "results" / "supernet"
PROXY = ROOT / "scripts" / "results" / "proxy"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from search.config import CONF_DIR, load

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load(hydra_compose(config_name="config",
                                  overrides=["+device=rpi4", "proxy=supernet", *overrides]))


class Prepared(NamedTuple):
    data: Any  # the proxy's ProxyData (teacher logits included)
    shape: dict
    net: Any  # the trained SuperNet
    path: Path  # its .safetensors
    manifest: dict
    images: Any  # 64 training images (NASWOT's batch)
    dataset: Any
    teacher: Any  # its TeacherCache


def prepared(cfg, device: str, curve: Path | None = None, keep: Path | None = None
             ) -> Prepared:
    """The search's proxy data (teacher logits included) and the trained supernet, with the
    dataset and teacher they come from; ``curve``: a CSV that gets the 48's rank statistics
    after every epoch of a training (:class:`Curve`); ``keep``: a folder that holds a copy of
    the training's last checkpoint (:func:`kept_checkpoint`), so that a long training goes
    on from it on another machine or after the cache is lost."""
    import torch

    from search.data import load_dataset
    from search.proxy import prepare_proxy_data, to_device
    from search.supernet import train_supernet
    from search.teacher import TeacherCache

    torch.set_num_threads(cfg.search.thread_count())
    dataset = load_dataset(cfg.data, cfg.seed)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    teacher.model()
    data = to_device(prepare_proxy_data(cfg, dataset, teacher), device)
    shape = dict(in_chans=dataset.in_chans, input_size=dataset.size,
                 num_classes=dataset.num_classes)
    start, last = time.time(), [0.0]

    def on_step(step: int, total: int) -> None:
        now = time.time()
        if now - last[0] > 60 or step == total:
            last[0] = now
            print(f"supernet: step {step}/{total}, {now - start:.0f} s", flush=True)

    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    images = dataset.train_x[train_idx[:64]]
    on_epoch = None if curve is None else Curve(cfg, curve, data, shape, images)
    if keep is not None:
        on_epoch = kept_checkpoint(cfg, data, shape, teacher.recipe, keep, on_epoch)
    net, path = train_supernet(cfg, data, shape, on_step=on_step, device=device,
                               teacher=teacher.recipe, on_epoch=on_epoch)
    manifest = json.loads(path.with_name("manifest.json").read_text())
    return Prepared(data, shape, net, path, manifest, images, dataset, teacher)


def kept_checkpoint(cfg, data, shape: dict, teacher: dict, keep: Path, then=None):
    """Before the training: the checkpoint in ``keep`` copied into the cache where it is
    further on than the cache's (or the cache has none) and the supernet is not finished.
    Returns the ``on_epoch`` that copies each new checkpoint into ``keep`` (then calls
    ``then``)."""
    import shutil

    from safetensors import safe_open

    from search.study import stable_hash
    from search.supernet import supernet_fingerprint

    key = stable_hash(supernet_fingerprint(cfg, data, shape, teacher))
    cache = Path(cfg.cache_dir) / "supernet" / f"{cfg.space.name}-{key}"

    def epoch_of(path: Path) -> int:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            return int(meta["epoch"]) if meta.get("fingerprint_hash") == key else -1
        except Exception:  # missing or unreadable: nothing to go on from
            return -1

    kept = keep / "checkpoint.safetensors"
    if not (cache / "supernet.safetensors").is_file() and \
            epoch_of(kept) > epoch_of(cache / "checkpoint.safetensors"):
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, cache / ".checkpoint.tmp")
        (cache / ".checkpoint.tmp").rename(cache / "checkpoint.safetensors")
        print(f"supernet: going on from {kept} (epoch {epoch_of(kept)})", flush=True)

    def on_epoch(epoch: int, net) -> None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache / "checkpoint.safetensors", keep / ".checkpoint.tmp")
        (keep / ".checkpoint.tmp").rename(kept)
        if then is not None:
            then(epoch, net)

    return on_epoch


def rank_stats(pred: list[float], truth: list[float]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    return {"kendall": round(float(kendalltau(pred, truth)[0]), 3),
            "spearman": round(float(spearmanr(pred, truth)[0]), 3), "n": len(pred)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="tables from stored scores")
    parser.add_argument("--device", default="cpu", help="where the supernet trains")
    parser.add_argument("--n", type=int, default=200, help="architectures timed for cost")
    parser.add_argument("--out", default=str(OUT), help="the results folder")
    parser.add_argument("--ship", action="store_true",
                        help="copy the trained supernet into the package (search/supernets/)")
    parser.add_argument("--curve", action="store_true",
                        help="score the 48 after every epoch of training (curve.csv)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the training's last checkpoint in --out (it goes on from "
                        "there on another machine)")
    parser.add_argument("--inherit", default="",
                        help="weight inheritance: steps of distillation from the supernet's "
                        "weights before scoring, e.g. 0,30,100 (inherit/ in --out)")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args(argv)
    cfg = compose(args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.inherit:
        return inherit(cfg, args, out / "inherit",
                       [int(s) for s in args.inherit.split(",")])
    if not args.report:
        score(cfg, args, out)
    return report(out, args.overrides)


def inherit(cfg, args, out_dir: Path, steps_list: list[int], lr: float = 0.01,
            n_val: int = 2000) -> int:
    """Weight inheritance as a cheap score: each of the 48 starts from its sub-network's
    weights (batch norm recalibrated), trains ``steps`` steps of the distilled proxy's
    training (batch 64, pruned widths from the start, fake-quantized at its bits), and is
    scored on ``n_val`` validation images (fidelity and accuracy); 0 steps: the sub-network
    as the supernet scores it, float weights. Writes ``scores.csv`` and ``report.md``."""
    import torch

    from search.data import to_float
    from search.proxy import ProxyData, proxy_score, train_candidate, validation_measures
    from search.train import Recipe, predict_logits
    from spaces.quant import attach_fake_quant

    data, _, net, *_ = prepared(cfg, args.device)
    calib = data.train_x[:cfg.proxy.supernet.calibration_images]
    val = ProxyData(None, None, None, data.val_x[:n_val], data.val_y[:n_val],
                    data.val_teacher[:n_val])
    rows = []
    for arch in the_48():
        row = {"arch_id": arch.arch_id}
        weights = net.recalibrate(arch, [to_float(calib[i:i + 128])
                                         for i in range(0, len(calib), 128)], quantize=False)
        start_state = {k: v.detach().clone() for k, v in weights.items()}
        for steps in steps_list:
            began = time.time()
            if steps == 0:
                model = net.extract(arch, weights)
                if any(b < 32 for b in arch.bits):
                    attach_fake_quant(model, arch)
            else:
                recipe = Recipe(epochs=steps * 64 / len(data.train_y), batch=64, lr=lr,
                                temperature=cfg.proxy.temperature, alpha=cfg.proxy.alpha)
                model = train_candidate(arch, data.train_x, data.train_y, data.train_teacher,
                                        recipe, seed=cfg.seed, prune_at=0.0, start=start_state)
            with torch.no_grad():
                m = validation_measures(predict_logits(model.eval(), val.val_x), val)
            row.update({f"fidelity_{steps}": round(proxy_score(m, "fidelity"), 6),
                        f"accuracy_{steps}": m["accuracy"],
                        f"seconds_{steps}": round(time.time() - began, 2)})
        rows.append(row)
        print(row, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    truth = ground_truth()
    lines = [f"Weight inheritance (`python scripts/supernet_benchmark.py --inherit "
             f"{args.inherit}`): each of the 48 from its sub-network's weights, trained a few "
             f"steps (lr {lr}, batch 64), scored on {n_val} validation images; "
             f"{torch.get_num_threads()} thread(s), seconds as measured here (other jobs may "
             "share the cores).", "",
             "| steps | Spearman: fidelity | accuracy | median s |", "|---|---|---|---|"]
    for steps in steps_list:
        sp = {k: rank_stats([r[f"{k}_{steps}"] for r in rows],
                            [truth[r["arch_id"]] for r in rows])["spearman"]
              for k in ("fidelity", "accuracy")}
        median = statistics.median(r[f"seconds_{steps}"] for r in rows)
        lines.append(f"| {steps} | {sp['fidelity']} | {sp['accuracy']} | {median:.2f} |")
    text = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(text)
    print(text)
    return 0


def score(cfg, args, out_dir: Path) -> None:
    import torch

    from search.proxy import naswot
    from search.supernet import score_sub_network
    from spaces.space import RandomChoices, sample_arch

    data, shape, net, path, manifest, images, _, _ = prepared(
        cfg, args.device, out_dir / "curve.csv" if args.curve else None,
        out_dir if args.keep else None)
    if args.ship:
        import shutil

        from search.supernet import SHIPPED

        target = SHIPPED / f"{cfg.data.name}-{cfg.space.name}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / "supernet.safetensors")
        shutil.copyfile(path.with_name("manifest.json"), target / "manifest.json")
        print(f"shipped: {target}")
    rows, cal = score_48(cfg, net, data, shape, images, manifest["fingerprint_hash"])
    calib_x = data.train_x[:cfg.proxy.supernet.calibration_images]
    with open(out_dir / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    costs = []
    for i in range(args.n):
        arch = sample_arch(RandomChoices(50_000 + i), cfg.space, bits=cfg.device.bits,
                           **shape)
        t = time.perf_counter()
        score_sub_network(net, arch, data, "fidelity", calib_x)
        naswot(arch, images, cfg.seed)
        costs.append(time.perf_counter() - t)
    costs.sort()
    (out_dir / "run.json").write_text(json.dumps({
        "supernet": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "training_seconds": manifest["seconds"], "training_device": manifest["device"],
        "epochs": manifest["epochs"], "threads": torch.get_num_threads(),
        "calibration": {k: cal[k] for k in ("fidelity", "naswot", "archs")},
        "trial_cost_s": {"n": len(costs), "median": round(statistics.median(costs), 3),
                         "p10": round(costs[len(costs) // 10], 3),
                         "p90": round(costs[9 * len(costs) // 10], 3)},
    }, indent=1))


def the_48() -> list:
    """The proxy benchmark's 48 architectures."""
    from spaces.arch import Arch

    return [Arch.from_json(json.dumps(a["arch"])) for a in json.loads(
        (PROXY / "archs.json").read_text())["archs"]]


def score_48(cfg, net, data, shape, images, key: str) -> tuple[list[dict], dict]:
    """The 48 scored by the supernet ``net`` (the search's score, its fidelity and
    accuracy), with the score scales calibrated for it."""
    from search.proxies import SupernetProxy
    from search.proxy import naswot
    from search.supernet import score_sub_network

    proxy = SupernetProxy(cfg)
    proxy.data, proxy.net, proxy.shape, proxy.images = data, net, shape, images
    proxy.supernet_key = key
    cal = proxy.calibrate_scales()
    calib_x = data.train_x[:cfg.proxy.supernet.calibration_images]
    rows = []
    for arch in the_48():
        out = score_sub_network(net, arch, data, "fidelity", calib_x)
        zc = naswot(arch, images, cfg.seed)
        combined = ((out["trained_score"] - cal["fidelity"]["mean"]) / cal["fidelity"]["std"]
                    + (zc - cal["naswot"]["mean"]) / cal["naswot"]["std"])
        rows.append({"arch_id": arch.arch_id, "supernet": round(combined, 6),
                     "supernet_fidelity": round(out["trained_score"], 6),
                     "supernet_accuracy": out["accuracy"],
                     "cost_s": round(out["cost_s"], 4)})
    return rows, cal


def ground_truth() -> dict[str, float]:
    """Seed-0 test accuracy of the 48 after full training."""
    with open(PROXY / "ground_truth.csv") as f:
        return {r["arch_id"]: float(r["test_accuracy"]) for r in csv.DictReader(f)
                if r["seed"] == "0"}


class Curve:
    """``on_epoch`` of the training: the 48 scored after each epoch, a row of
    ``curve.csv`` (epoch, seconds, Spearman and Kendall of each measure); rows of epochs
    already in the file are kept (a resumed training)."""

    MEASURES = ("supernet", "supernet_fidelity", "supernet_accuracy")

    def __init__(self, cfg, path: Path, data, shape: dict, images) -> None:
        self.cfg, self.path, self.began = cfg, path, time.time()
        self.data, self.shape, self.images = data, shape, images
        self.truth = ground_truth()

    def __call__(self, epoch: int, net) -> None:
        start = time.time()
        rows, _ = score_48(self.cfg, net, self.data, self.shape, self.images, "curve")
        row = {"epoch": epoch, "train_s": round(start - self.began, 1),
               "score_s": round(time.time() - start, 1)}
        for m in self.MEASURES:
            stats = rank_stats([float(r[m]) for r in rows],
                               [self.truth[r["arch_id"]] for r in rows])
            row[f"{m}_spearman"], row[f"{m}_kendall"] = stats["spearman"], stats["kendall"]
        row["mean_accuracy"] = round(statistics.mean(r["supernet_accuracy"] for r in rows), 4)
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(f"curve: epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in row.items()),
              flush=True)
        write_curve_markdown(self.path)


def write_curve_markdown(path: Path) -> None:
    """``curve.md`` beside ``curve.csv``: the Spearman of each measure after each epoch."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    lines = ["| epoch | hours | search's score | fidelity | accuracy | sub-networks' mean "
             "accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['epoch']} | {float(r['train_s']) / 3600:.1f} | "
                     f"{r['supernet_spearman']} | {r['supernet_fidelity_spearman']} | "
                     f"{r['supernet_accuracy_spearman']} | "
                     f"{100 * float(r['mean_accuracy']):.1f}% |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def report(out_dir: Path, overrides: list[str]) -> int:
    truth = ground_truth()
    ours = {r["arch_id"]: r for r in csv.DictReader(open(out_dir / "scores.csv"))}
    others = {r["arch_id"]: r for r in csv.DictReader(open(PROXY / "scores.csv"))}
    cal = json.loads((PROXY / "calibration.json").read_text())
    run = json.loads((out_dir / "run.json").read_text())
    ids = [a for a in truth if a in ours and a in others]
    top = sorted(ids, key=lambda a: -truth[a])[:len(ids) // 4]

    def default(r: dict) -> float:  # the distilled proxy's fidelity+naswot, as searched
        return ((float(r["distill"]) - cal["fidelity"]["mean"]) / cal["fidelity"]["std"]
                + (float(r["naswot"]) - cal["naswot"]["mean"]) / cal["naswot"]["std"])

    columns = {
        "supernet (fidelity+naswot, the search's score)": lambda a: float(ours[a]["supernet"]),
        "supernet fidelity": lambda a: float(ours[a]["supernet_fidelity"]),
        "supernet accuracy": lambda a: float(ours[a]["supernet_accuracy"]),
        "distill, fidelity+naswot (today's default)": lambda a: default(others[a]),
        "distill fidelity": lambda a: float(others[a]["distill"]),
        "NASWOT": lambda a: float(others[a]["naswot"]),
        "MACs": lambda a: float(others[a]["macs"]),
    }
    costs = {"supernet (fidelity+naswot, the search's score)": run["trial_cost_s"]["median"],
             "distill, fidelity+naswot (today's default)": statistics.median(
                 float(others[a]["distill_cost_s"]) + float(others[a]["naswot_cost_s"])
                 for a in ids)}
    table = {}
    lines = ["| proxy | Kendall tau | Spearman rho | top quarter: Kendall | Spearman | "
             "s / trial |", "|---|---|---|---|---|---|"]
    for name, fn in columns.items():
        all_ = rank_stats([fn(a) for a in ids], [truth[a] for a in ids])
        q = rank_stats([fn(a) for a in top], [truth[a] for a in top])
        table[name] = {"all": all_, "top_quarter": q, "seconds": costs.get(name)}
        cost = f"{costs[name]:.2f}" if name in costs else ""
        lines.append(f"| {name} | {all_['kendall']} | {all_['spearman']} | {q['kendall']} | "
                     f"{q['spearman']} | {cost} |")
    head = (f"# proxy=supernet against the ground truth ({len(ids)} architectures; top "
            f"quarter: {len(top)})\n\n`python scripts/supernet_benchmark.py"
            f"{''.join(' ' + o for o in overrides)}`: the supernet of the search's defaults"
            f"{' with those overrides' if overrides else ''} trained in "
            f"{run['training_seconds'] / 60:.1f} min on "
            f"{run['training_device']} ({run['threads']} threads, {run['epochs']} epochs); "
            f"scoring a trial (batch-norm recalibration, validation, NASWOT): median "
            f"{run['trial_cost_s']['median']:.2f} s, 10-90% {run['trial_cost_s']['p10']:.2f}-"
            f"{run['trial_cost_s']['p90']:.2f} s over {run['trial_cost_s']['n']} sampled "
            "architectures. The distilled proxy's scores and costs are those of "
            "`scripts/results/proxy/scores.csv` (2 CPU cores).\n\n")
    text = head + "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.json").write_text(json.dumps({"run": run, "rank": table}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
