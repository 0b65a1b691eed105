"""How the distilled proxy's budget and score trade rank quality for cost.

    python scripts/proxy_budget_sweep.py                 # all budgets, all architectures
    python scripts/proxy_budget_sweep.py --shard 0/2 &   # split over processes (1 thread each)
    python scripts/proxy_budget_sweep.py --shard 1/2
    python scripts/proxy_budget_sweep.py --report        # the table only

For each budget (training images x epochs, with or without the teacher) trains every
architecture of ``scripts/results/proxy/archs.json`` as the proxy does (dense, pruned
half-way, fake quantization, distillation from the cached teacher) and scores the model on
5,000 validation images with four measures: accuracy, cross-entropy on the true labels, KL
divergence from the teacher, agreement with the teacher's top-1; also at a checkpoint (what
early stopping sees; half-way is the dense model, before pruning). Rows go to
``scripts/results/proxy/budget_sweep.csv`` (resumable); the report ranks each (budget,
measure) against the ground truth and replays early stopping and the zero-cost pre-filter
on the measurements (``budget_sweep.md``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "proxy"
SWEEP = RESULTS / "budget_sweep.csv"


class Budget(NamedTuple):
    """One way of training the proxy. ``seed`` sets the weights' initialization and the batch
    order (the data split stays seed 0's); ``prune_at`` is the fraction of the steps trained
    dense before the prune (0: the pruned widths from the start)."""
    images: int          # training images
    epochs: int
    at: float            # checkpoint scored on the way (what early stopping sees)
    alpha: float = 0.7   # weight of the distillation loss (0: no teacher)
    prune_at: float = 0.5
    seed: int = 0
    batch: int = 128
    lr: float = 0.05


BUDGETS = {"6k_x2": Budget(6000, 2, 0.5), "12k_x4": Budget(12000, 4, 0.75),
           "12k_x4_no_teacher": Budget(12000, 4, 0.75, alpha=0.0),
           # the pruned widths trained from the start: no dense phase to recover from
           "12k_x4_prune0": Budget(12000, 4, 0.75, prune_at=0.0),
           # the default proxy again with another training seed: the proxy's own noise
           "12k_x4_seed1": Budget(12000, 4, 0.75, seed=1),
           # more optimizer steps for the same images: half the batch
           "12k_x4_b64": Budget(12000, 4, 0.75, batch=64),
           "12k_x4_b64_seed1": Budget(12000, 4, 0.75, batch=64, seed=1),
           "12k_x4_b32": Budget(12000, 4, 0.75, batch=32),
           "12k_x4_b64_no_teacher": Budget(12000, 4, 0.75, alpha=0.0, batch=64),
           # a larger step size: deep networks may move further in the short budget
           "12k_x4_lr0.1": Budget(12000, 4, 0.75, lr=0.1),
           # the same number of steps over twice as many distinct images
           "24k_x2": Budget(24000, 2, 0.75)}
VAL_IMAGES = 5000
FIELDS = ["arch_id", "budget", "at", "accuracy", "ce", "kl", "agreement", "cost_s"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def measures(model, data) -> dict:
    import torch.nn.functional as F

    from search.proxy import validation_measures
    from search.train import predict_logits

    logits = predict_logits(model, data.val_x).float()
    m = validation_measures(logits, data)
    return {"accuracy": m["accuracy"], "ce": float(F.cross_entropy(logits, data.val_y)),
            "kl": m["teacher_kl"], "agreement": m["teacher_agreement"]}


def sweep(shard: tuple[int, int], threads: int, budgets: list[str]) -> None:
    import torch
    from proxy_benchmark import load_archs, load_cfg, load_dataset_and_teacher  # same folder

    from search.proxy import prepare_proxy_data, proxy_recipe, train_candidate
    from spaces.arch import Arch

    torch.set_num_threads(threads)
    cfg = load_cfg()
    dataset, teacher = load_dataset_and_teacher(cfg)
    archs = [a for i, a in enumerate(load_archs()) if i % shard[1] == shard[0]]
    part = SWEEP.with_suffix(f".part{shard[0]}.csv")
    done = {(r["arch_id"], r["budget"]) for path in (SWEEP, part) if path.exists()
            for r in read_csv(path) if r["at"] == "1.0"}
    for name, b in BUDGETS.items():
        if budgets and name not in budgets:
            continue
        at = b.at
        c = dataclasses.replace(cfg, proxy=dataclasses.replace(
            cfg.proxy, train_images=b.images, val_images=VAL_IMAGES, epochs=b.epochs,
            alpha=b.alpha, batch=b.batch, lr=b.lr))
        data = prepare_proxy_data(c, dataset, teacher)
        recipe = proxy_recipe(c.proxy)
        for entry in archs:
            if (entry["arch_id"], name) in done:
                continue
            arch = Arch.from_json(json.dumps(entry["arch"]))
            rows = []
            start = time.perf_counter()

            def at_half(model, rows=rows, start=start, at=at, data=data):
                rows.append({"at": at, **measures(model, data),
                             "cost_s": time.perf_counter() - start})
                return False

            model = train_candidate(arch, data.train_x, data.train_y, data.train_teacher,
                                    recipe, seed=b.seed, checkpoint=(at, at_half),
                                    prune_at=b.prune_at)
            rows.append({"at": 1.0, **measures(model, data),
                         "cost_s": time.perf_counter() - start})
            new = not part.exists()
            with open(part, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    w.writeheader()
                for r in rows:
                    w.writerow({"arch_id": arch.arch_id, "budget": name,
                                **{k: round(v, 6) if isinstance(v, float) else v
                                   for k, v in r.items()}})
            print(f"{name} {arch.arch_id}: acc {rows[-1]['accuracy']:.4f} "
                  f"{rows[-1]['cost_s']:.1f} s", flush=True)


def report() -> str:
    from scipy.stats import kendalltau, spearmanr

    # The stored table, updated with what the per-process part files hold.
    merged = {(r["arch_id"], r["budget"], r["at"]): r
              for r in (read_csv(SWEEP) if SWEEP.exists() else [])}
    parts = sorted(RESULTS.glob("budget_sweep.part*.csv"))
    for part in parts:
        merged.update({(r["arch_id"], r["budget"], r["at"]): r for r in read_csv(part)})
    rows = sorted(merged.values(), key=lambda r: (r["budget"], r["arch_id"], r["at"]))
    if parts:
        with open(SWEEP, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    truth = {r["arch_id"]: float(r["test_accuracy"])
             for r in read_csv(RESULTS / "ground_truth.csv") if r["seed"] == "0"}
    # NASWOT (zero-cost, scores.csv) added to each measure: both z-scored over the
    # architectures, equal weights, nothing fitted to the ground truth (offline: the search
    # ranks by its score alone).
    scores = RESULTS / "scores.csv"
    naswot = {r["arch_id"]: float(r["naswot"]) for r in (read_csv(scores) if scores.exists()
                                                         else []) if r.get("naswot")}

    def with_naswot(x: list[float], ids: list[str]) -> list[float] | None:
        if not all(a in naswot for a in ids):
            return None
        return list(zscore(x) + zscore([naswot[a] for a in ids]))

    lines = ["Each measure alone, and with NASWOT's z-score added (equal weights, offline).", "",
             "| budget | at | measure | Kendall tau | Spearman rho | + NASWOT tau | + NASWOT rho "
             "| median cost s | n |", "|---|---|---|---|---|---|---|---|---|"]
    for name in BUDGETS:
        for at in (str(BUDGETS[name].at), "1.0"):
            sel = {r["arch_id"]: r for r in rows if r["budget"] == name and r["at"] == at}
            ids = [a for a in truth if a in sel]
            if len(ids) < 3:
                continue
            y = [truth[a] for a in ids]
            cost = sorted(float(sel[a]["cost_s"]) for a in ids)[len(ids) // 2]
            for m, sign in (("accuracy", 1), ("ce", -1), ("kl", -1), ("agreement", 1)):
                x = [sign * float(sel[a][m]) for a in ids]
                both = with_naswot(x, ids)
                plus = ("| - | - " if both is None else
                        f"| {kendalltau(both, y)[0]:.3f} | {spearmanr(both, y)[0]:.3f} ")
                lines.append(f"| {name} | {at} | {m} | {kendalltau(x, y)[0]:.3f} | "
                             f"{spearmanr(x, y)[0]:.3f} {plus}| {cost:.1f} | {len(ids)} |")
    return "\n".join(lines)


def zscore(x: list[float]):
    """``x`` standardized over its own values (mean 0, standard deviation 1)."""
    import numpy as np

    a = np.asarray(x, dtype=float)
    return (a - a.mean()) / (a.std() or 1.0)


def front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Ids not dominated in (higher accuracy, lower latency)."""
    from search.pareto import nondominated

    ids = list(points)
    return {ids[i] for i in nondominated([points[a] for a in ids], [1.0, -1.0])}


def score_value(row: dict, score: str) -> float:
    """A sweep row's value of a proxy score (``proxy.score``), by the search's own rule."""
    from search.proxy import proxy_score

    return proxy_score({"accuracy": float(row["accuracy"]), "teacher_kl": float(row["kl"])},
                       score)


def replay_inputs(budget: str, score: str) -> tuple[dict, dict, dict]:
    """For the replays: each architecture's final proxy ``score`` under ``budget``, its
    predicted rpi4 latency, and its ground-truth (seed 0) test accuracy."""
    from proxy_benchmark import load_archs

    final = {r["arch_id"]: score_value(r, score) for r in read_csv(SWEEP)
             if r["budget"] == budget and r["at"] == "1.0"}
    lat = {a["arch_id"]: a["rpi4_latency_ms"] for a in load_archs()}
    truth = {r["arch_id"]: float(r["test_accuracy"])
             for r in read_csv(RESULTS / "ground_truth.csv") if r["seed"] == "0"}
    return final, lat, truth


def front_recovery() -> str:
    """What a search would keep: for each budget and score, the front of (score, predicted rpi4
    latency) over the 48 architectures against the ground truth's front: how many members
    they share, and the test accuracy lost at each ground-truth front member's latency by
    taking the best of the proxy's front there instead (mean over the ground-truth front)."""
    lines = ["Fronts (score against predicted rpi4 latency) against the ground truth's:", "",
             "| budget | score | proxy front | shared with ground-truth front | "
             "accuracy lost at its latencies, mean (points) |", "|---|---|---|---|---|"]
    for name in BUDGETS:
        for score in ("accuracy", "fidelity"):
            final, lat, truth = replay_inputs(name, score)
            ids = [a for a in final if a in truth]
            if len(ids) < len(truth):
                continue
            mine = front({a: (final[a], lat[a]) for a in ids})
            true = front({a: (truth[a], lat[a]) for a in ids})
            lost = [truth[a] - max((truth[b] for b in mine if lat[b] <= lat[a]), default=0.0)
                    for a in true]
            lines.append(f"| {name} | {score} | {len(mine)} | {len(mine & true)} of "
                         f"{len(true)} | {100 * sum(lost) / len(lost):.2f} |")
    return "\n".join(lines)


def early_stop_simulation(budget: str, score: str = "accuracy",
                          margins=(0.0, 0.005, 0.01, 0.02), orders: int = 50) -> str:
    """Replay the search's early-stop rule over the sweep's measurements: architectures arrive
    in random orders; one stops at the checkpoint when an earlier, fully trained one at most as
    slow (predicted rpi4 latency) beat its checkpoint ``score`` by ``margin`` at both its own
    checkpoint and its end. Reports the share stopped, the training time saved, and how many
    stopped architectures belonged on the front (of the full proxy's results, and of the
    ground truth)."""
    import random

    at = BUDGETS[budget].at
    ckpt = {r["arch_id"]: score_value(r, score) for r in read_csv(SWEEP)
            if r["budget"] == budget and r["at"] == str(at)}
    final, lat, truth = replay_inputs(budget, score)
    ids = [a for a in final if a in ckpt and a in truth]
    if len(ids) < 3:
        return ""
    proxy_front = front({a: (final[a], lat[a]) for a in ids})
    true_front = front({a: (truth[a], lat[a]) for a in ids})
    lines = [f"Early stop replayed on {budget}, scored by {score} ({len(ids)} architectures, "
             f"checkpoint at {at}, {orders} random arrival orders; fronts over {score} and "
             "rpi4 latency: "
             f"proxy front {len(proxy_front)}, ground-truth front {len(true_front)}):", "",
             "| margin | stopped | training saved | stopped on proxy front | "
             "stopped on ground-truth front |", "|---|---|---|---|---|"]
    for margin in margins:
        stopped_n = lost_p = lost_t = 0
        for seed in range(orders):
            order = ids[:]
            random.Random(seed).shuffle(order)
            done: list[str] = []
            for a in order:
                if any(min(ckpt[b], final[b]) >= ckpt[a] + margin and lat[b] <= lat[a]
                       for b in done):
                    stopped_n += 1
                    lost_p += a in proxy_front
                    lost_t += a in true_front
                else:
                    done.append(a)
        n = orders * len(ids)
        lines.append(f"| {margin} | {100 * stopped_n / n:.1f}% | "
                     f"{100 * stopped_n * (1 - at) / n:.1f}% | {lost_p / orders:.2f} | "
                     f"{lost_t / orders:.2f} |")
    return "\n".join(lines)


def prefilter_simulation(budget: str, score: str, ns=(1, 2, 3, 5), orders: int = 50) -> str:
    """Replay the zero-cost pre-filter (``proxy.prefilter.dominated_by=N``, NASWOT): an
    architecture is not trained when N earlier ones at most as slow have a higher NASWOT
    score. Reports the share skipped and the front members lost (of the proxy's front over
    all architectures, and of the ground truth's)."""
    import random

    scores = {r["arch_id"]: float(r["naswot"]) for r in read_csv(RESULTS / "scores.csv")}
    final, lat, truth = replay_inputs(budget, score)
    ids = [a for a in final if a in scores and a in truth]
    if len(ids) < 3:
        return ""
    proxy_front = front({a: (final[a], lat[a]) for a in ids})
    true_front = front({a: (truth[a], lat[a]) for a in ids})
    lines = [f"NASWOT pre-filter replayed on {budget} ({len(ids)} architectures, {orders} "
             "random arrival orders):", "",
             "| dominated_by | skipped | on proxy front, skipped | on ground-truth front, "
             "skipped |", "|---|---|---|---|"]
    for n in ns:
        skipped = lost_p = lost_t = 0
        for seed in range(orders):
            order = ids[:]
            random.Random(seed).shuffle(order)
            for i, a in enumerate(order):
                if sum(scores[b] > scores[a] and lat[b] <= lat[a] for b in order[:i]) >= n:
                    skipped += 1
                    lost_p += a in proxy_front
                    lost_t += a in true_front
        lines.append(f"| {n} | {100 * skipped / (orders * len(ids)):.1f}% | "
                     f"{lost_p / orders:.2f} of {len(proxy_front)} | "
                     f"{lost_t / orders:.2f} of {len(true_front)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th architecture from K")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budgets", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    if not args.report:
        k, n = (int(v) for v in args.shard.split("/"))
        sweep((k, n), args.threads, [b for b in args.budgets.split(",") if b])
    text = report() + "\n\n" + front_recovery()
    from proxy_benchmark import load_cfg, sweep_budget  # same folder

    proxy = load_cfg().proxy
    default = sweep_budget(proxy)
    # the earlier defaults, scored by accuracy, and today's default with its score
    for name, score in (("6k_x2", "accuracy"), ("12k_x4", "accuracy"), (default, proxy.score)):
        sim = name and early_stop_simulation(name, score)
        if sim:
            text += "\n\n" + sim
    sim = default and prefilter_simulation(default, proxy.score)
    if sim:
        text += "\n\n" + sim
    print(text)
    (RESULTS / "budget_sweep.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
