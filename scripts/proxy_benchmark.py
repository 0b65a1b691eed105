"""Benchmark: how well each accuracy proxy ranks architectures the way full training does.

    python scripts/proxy_benchmark.py            # score what is missing, then the table
    python scripts/proxy_benchmark.py --report   # the table from the stored scores only
    python scripts/proxy_benchmark.py --cost 8   # time the default proxy alone (cost.csv)

Scores every architecture of ``scripts/results/proxy/archs.json`` with each proxy, on this
machine's CPU (``search.threads`` torch threads), and stores them with their cost in seconds in
``scripts/results/proxy/scores.csv`` (resumable; later proxy changes are re-scored without
re-training the ground truth). Then compares each proxy's ranking with the ground truth
(``ground_truth.csv``, seed-0 test accuracy after full training; ``proxy_ground_truth.py``):
Kendall tau and Spearman rho, and the seed-noise ceiling (how well one seed's full training
ranks the architectures that have several seeds against another seed's). Scoring also
calibrates ``proxy.score=fidelity+naswot`` as a search would (``calibration.json``), and the
table rates that score with those scales.

Proxies: ``distill`` (the search's default training: the candidate pruned and fake-quantized
as deployed, trained briefly against the teacher's soft labels, scored by its fidelity to the
teacher), ``default`` (the search's default score, ``proxy.score=fidelity+naswot``: that
fidelity and ``naswot`` standardized with the scales a search calibrates, summed),
``no_teacher`` (the same short training on hard labels, scored by accuracy), ``synflow``,
``naswot`` (data at initialization), ``params``, ``macs``; and, kept for comparison, earlier
defaults: ``distill_6k_x2`` / ``no_teacher_6k_x2`` (6,000 images x 2 epochs, 2,000 validation
images) and ``distill_12k_x4`` / ``no_teacher_12k_x4`` (12,000 x 4 at batch 128, accuracy).
Trainings that ``proxy_budget_sweep.py`` already ran with exactly the default proxy's
settings are reused (same function, data and seed: the same numbers), not run again; a
column scored with other settings than today's defaults (``scores.settings.json``) is scored
again.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "proxy"
PROXIES = ["distill", "no_teacher", "synflow", "naswot", "params", "macs"]
# Scores of earlier defaults, kept for comparison: the first budget (6,000 images x 2 epochs,
# 2,000 validation images) and the second (12,000 x 4 at batch 128, scored by accuracy).
OLD = ["distill_6k_x2", "no_teacher_6k_x2", "distill_12k_x4", "no_teacher_12k_x4"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_cfg():
    from hydra import compose, initialize_config_dir

    from search.config import CONF_DIR, load

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load(compose(config_name="config", overrides=["+device=rpi4"]))


def load_archs() -> list[dict]:
    """The benchmark's architectures (``archs.json``), in order of predicted rpi4 latency."""
    return json.loads((RESULTS / "archs.json").read_text())["archs"]


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (first and last included)."""
    return [items[round(k * (len(items) - 1) / max(1, n - 1))] for k in range(n)]


def load_dataset_and_teacher(cfg):
    """The dataset and the cached teacher of ``cfg`` (trained first if not cached)."""
    from search.data import load_dataset
    from search.teacher import TeacherCache

    dataset = load_dataset(cfg.data, cfg.seed)
    return dataset, TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir,
                                 cfg.data.val_images, cfg.seed)


def sweep_budget(proxy) -> str | None:
    """The name of the budget in ``proxy_budget_sweep.py`` that trains exactly like ``proxy``
    (its rows can stand in for this proxy's), or None."""
    from proxy_budget_sweep import BUDGETS, VAL_IMAGES

    if proxy.val_images != VAL_IMAGES:
        return None
    for name, b in BUDGETS.items():
        if (b.images, b.epochs, b.alpha, b.batch, b.lr, b.prune_at, b.seed) == (
                proxy.train_images, proxy.epochs, proxy.alpha, proxy.batch, proxy.lr, 0.5, 0):
            return name
    return None


def column_settings(proxy) -> dict:
    """What a trained proxy's scores depend on: a stored column made with other settings is
    scored again (``scores.settings.json`` records them)."""
    settings = dataclasses.asdict(proxy)
    for key in ("kind", "early_stop", "prefilter", "calibration_archs", "supernet", "rescore",
                "promote"):
        settings.pop(key)
    return settings


def score_all(limit: int | None) -> None:
    import torch
    from proxy_budget_sweep import SWEEP, score_value

    from search.proxy import distilled_proxy, naswot, prepare_proxy_data, synflow
    from spaces.arch import Arch

    cfg = load_cfg()
    torch.set_num_threads(cfg.search.thread_count())
    # the default training scored by fidelity, the trained part of the default score
    # (fidelity+naswot is summed from the stored columns in the report)
    cfg = dataclasses.replace(cfg, proxy=dataclasses.replace(cfg.proxy, score="fidelity"))
    # the same training without a teacher, scored by its accuracy (there is no teacher to
    # be faithful to)
    plain = dataclasses.replace(cfg, proxy=dataclasses.replace(cfg.proxy, alpha=0.0,
                                                               score="accuracy"))
    path = RESULTS / "scores.csv"
    done = {r["arch_id"]: r for r in read_csv(path)} if path.exists() else {}
    settings_path = RESULTS / "scores.settings.json"
    recorded = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    settings = {name: column_settings(c.proxy) for name, c in (("distill", cfg),
                                                               ("no_teacher", plain))}
    for name in settings:
        if recorded.get(name) != settings[name]:  # made with other settings: score again
            for row in done.values():
                row.pop(name, None)
                row.pop(f"{name}_cost_s", None)
    settings_path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    archs = load_archs()[:limit]
    # Trainings the budget sweep already ran with exactly the proxy's settings are reused.
    swept = {}
    sweep_rows = read_csv(SWEEP) if SWEEP.exists() else []
    for name, c in (("distill", cfg), ("no_teacher", plain)):
        budget = sweep_budget(c.proxy)
        if budget:
            swept[name] = {r["arch_id"]: (score_value(r, c.proxy.score), r["cost_s"])
                           for r in sweep_rows if r["budget"] == budget and r["at"] == "1.0"}
    todo = [(a, p) for a in archs for p in PROXIES
            if not done.get(a["arch_id"], {}).get(p)
            and a["arch_id"] not in swept.get(p, {})]
    fields = ["arch_id"] + [f"{p}{s}" for p in PROXIES + OLD for s in ("", "_cost_s")]
    data = batch = None
    if any(p in ("distill", "no_teacher", "naswot") for _, p in todo):
        data = prepare_proxy_data(cfg, *load_dataset_and_teacher(cfg))
        batch = data.train_x[:64]
    scorers = {"distill": lambda a: distilled_proxy(a, data, cfg)["score"],
               "no_teacher": lambda a: distilled_proxy(a, data, plain)["score"],
               "synflow": synflow, "naswot": lambda a: naswot(a, batch, cfg.seed),
               "params": lambda a: a.params(), "macs": lambda a: a.macs()}
    for entry in archs:
        row = done.setdefault(entry["arch_id"], {"arch_id": entry["arch_id"]})
        arch = Arch.from_json(json.dumps(entry["arch"]))
        for name, rows in swept.items():
            if arch.arch_id in rows:
                value, cost = rows[arch.arch_id]
                row[name], row[f"{name}_cost_s"] = round(value, 6), cost
        for name in [p for a, p in todo if a is entry]:
            start = time.perf_counter()
            row[name] = round(float(scorers[name](arch)), 6)
            row[f"{name}_cost_s"] = round(time.perf_counter() - start, 4)
            print(f"{arch.arch_id} {name}: {row[name]} ({row[f'{name}_cost_s']:.1f} s)",
                  flush=True)
        with open(path, "w", newline="") as f:  # rewritten whole after each architecture
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(done.values())


def calibration() -> dict:
    """``proxy.score=fidelity+naswot``'s scales for the default proxy, as a search calibrates
    them (:func:`search.proxy.calibrate`: architectures sampled from the space, not these;
    cached), written to ``calibration.json`` for the report."""
    import torch

    from search.proxy import calibrate, prepare_proxy_data

    cfg = load_cfg()
    torch.set_num_threads(cfg.search.thread_count())
    dataset, teacher = load_dataset_and_teacher(cfg)
    data = prepare_proxy_data(cfg, dataset, teacher)
    shape = dict(in_chans=dataset.in_chans, input_size=dataset.size,
                 num_classes=dataset.num_classes)
    cal = calibrate(cfg, data, data.train_x[:64], shape, Path(cfg.cache_dir))
    (RESULTS / "calibration.json").write_text(json.dumps(cal, indent=1) + "\n")
    return cal


def report() -> str:
    from itertools import combinations

    import numpy as np
    from scipy.stats import kendalltau, spearmanr

    truth: dict[str, dict[int, float]] = {}
    for r in read_csv(RESULTS / "ground_truth.csv"):
        truth.setdefault(r["arch_id"], {})[int(r["seed"])] = float(r["test_accuracy"])
    scores = {r["arch_id"]: r for r in read_csv(RESULTS / "scores.csv")}
    ids = [a for a in truth if a in scores and 0 in truth[a]]
    y = [truth[a][0] for a in ids]
    lines = [f"{len(ids)} architectures; ground truth: seed-0 test accuracy after full training",
             "", "| proxy | Kendall tau | Spearman rho | cost s / architecture (median) |",
             "|---|---|---|---|"]
    # Each proxy's scores over the architectures, where every one of them has been scored.
    columns = {p: np.array([float(scores[a][p]) for a in ids]) for p in PROXIES + OLD
               if all(scores[a].get(p) for a in ids)}
    cal_path = RESULTS / "calibration.json"
    cal = json.loads(cal_path.read_text()) if cal_path.exists() else None
    if cal and "distill" in columns and "naswot" in columns:
        from search.proxy import combined_score

        # the search's default score: distill's fidelity and NASWOT on the scales a search
        # calibrates (architectures sampled from the space, not these)
        columns = {"default": np.array([combined_score(f, n, cal) for f, n in zip(
            columns["distill"], columns["naswot"])]), **columns}
    for p, x in columns.items():
        parts = ("distill", "naswot") if p == "default" else (p,)
        costs = sorted(sum(float(scores[a][f"{q}_cost_s"]) for q in parts) for a in ids)
        lines.append(f"| {p} | {kendalltau(x, y)[0]:.3f} | {spearmanr(x, y)[0]:.3f} | "
                     f"{costs[len(costs) // 2]:.3g} |")
    # Combinations of stored scores, each proxy standardized over the architectures and
    # summed with equal weights (nothing fitted to the ground truth). Offline: the search's
    # default uses fixed calibrated scales instead (the `default` row).
    combos = [("distill", "naswot"), ("distill", "macs"), ("distill", "naswot", "macs")]
    default = columns.pop("default", None)
    lines += ["", "Combinations (offline, not what the search uses): the sum of each proxy's "
              "z-score over these architectures (log for MACs), equal weights, nothing fitted "
              "to the ground truth.", "", "| combination | Kendall tau | Spearman rho |",
              "|---|---|---|"]
    for combo in (c for c in combos if all(p in columns for p in c)):
        total = np.zeros(len(ids))
        for p in combo:
            x = np.log(columns[p]) if p in ("macs", "params") else columns[p]
            total += (x - x.mean()) / x.std()
        lines.append(f"| {' + '.join(combo)} | {kendalltau(total, y)[0]:.3f} | "
                     f"{spearmanr(total, y)[0]:.3f} |")
    if default is not None:
        lines += ["", "`default` is the search's score, `proxy.score=fidelity+naswot`: distill's "
                  "fidelity plus NASWOT, each standardized with the scales a search calibrates "
                  f"on {len(cal['archs'])} architectures sampled from the space "
                  f"(`calibration.json`, {cal['seconds']:.0f} s once), not on these."]
    seeded = [a for a in truth if len(truth[a]) > 1]
    seeds = sorted({s for a in seeded for s in truth[a]})
    taus = [kendalltau([truth[a][s] for a in seeded], [truth[a][t] for a in seeded])[0]
            for s, t in combinations(seeds, 2)]
    rhos = [spearmanr([truth[a][s] for a in seeded], [truth[a][t] for a in seeded])[0]
            for s, t in combinations(seeds, 2)]
    lines += ["", (f"Seed-noise ceiling ({len(seeded)} architectures with seeds {seeds}): one "
              f"seed's ranking against another's, mean Kendall tau {sum(taus) / len(taus):.3f}, "
              f"Spearman rho {sum(rhos) / len(rhos):.3f}.")]
    return "\n".join(lines)


def measure_cost(n: int) -> str:
    """The default proxy's wall time per trial, alone on this machine with
    ``search.threads`` threads, for ``n`` architectures spread over the latency range
    (``cost.csv``); the scores' cost columns come from runs that shared the machine."""
    import torch

    from search.proxy import distilled_proxy, prepare_proxy_data
    from spaces.arch import Arch

    cfg = load_cfg()
    torch.set_num_threads(cfg.search.thread_count())
    data = prepare_proxy_data(cfg, *load_dataset_and_teacher(cfg))
    rows = []
    for entry in spread(load_archs(), n):
        arch = Arch.from_json(json.dumps(entry["arch"]))
        start = time.perf_counter()
        out = distilled_proxy(arch, data, cfg)  # no rivals: never stops early
        rows.append({"arch_id": arch.arch_id, "rpi4_latency_ms": entry["rpi4_latency_ms"],
                     "macs": arch.macs(), "seconds": round(time.perf_counter() - start, 2),
                     "accuracy": round(out["accuracy"], 4), "score": round(out["score"], 4)})
        print(rows[-1], flush=True)
    with open(RESULTS / "cost.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    secs = sorted(r["seconds"] for r in rows)
    return (f"default proxy cost, {torch.get_num_threads()} threads, {len(rows)} architectures "
            f"spread over the latency range: median {secs[len(secs) // 2]:.1f} s, "
            f"min {secs[0]:.1f} s, max {secs[-1]:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only the table")
    parser.add_argument("--limit", type=int, default=None, help="only the first N (smoke)")
    parser.add_argument("--cost", type=int, default=0, metavar="N",
                        help="only time the default proxy alone on N architectures")
    args = parser.parse_args()
    if args.cost:
        line = measure_cost(args.cost)
        print(line)
        (RESULTS / "cost.md").write_text(line + "\n")
        return
    if not args.report:
        score_all(args.limit)
        calibration()
    table = report()
    print(table)
    (RESULTS / "report.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
