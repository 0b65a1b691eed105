"""A search under a fine-tuning memory budget, and its front fine-tuned on the device.

    python scripts/edge_budget_search.py --work DIR [--trials 200] [--models 3] \
        [--epochs 5] [SEARCH OVERRIDES...]

The budget: half of the median ``train_memory_kib`` of the ``all`` scheme (every weight
trained, ``finetune.batch``) over 1,000 architectures sampled uniformly from the space. The
search (default ``+device=rpi4 proxy=supernet``, the shipped supernet scoring each trial in
about a second) runs with ``budget.train_memory_kib`` at that value and
``finetune.update=all``, so a full fine-tuning step of every architecture it trains fits in
half the memory a typical one needs. Checked: every completed trial that was not skipped is
within the budget. Then its front is exported and fine-tuned on the shifted camera exactly as
``scripts/edge_adaptation_benchmark.py`` does. Writes
``scripts/results/edge_training/budget_search.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import edge_adaptation_benchmark as adaptation  # noqa: E402

from latency_models.train_memory import train_memory_kib  # noqa: E402
from spaces.schemes import FinetuneConfig  # noqa: E402
from spaces.space import RandomChoices, SpaceConfig, sample_arch  # noqa: E402


def median_all_kib(n: int = 1000, batch: int | None = None) -> float:
    batch = batch or FinetuneConfig().batch
    return statistics.median(
        train_memory_kib(sample_arch(RandomChoices(50_000 + i), SpaceConfig(), bits=(32, 8),
                                     in_chans=1, input_size=28, num_classes=10), "all", batch)
        for i in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    median = median_all_kib()
    budget = round(median / 2)
    study = "edge-budget"
    overrides = (args.overrides or ["+device=rpi4", "proxy=supernet"]) + [
        f"search.n_trials={args.trials}", f"budget.train_memory_kib={budget}",
        "finetune.update=all", f"study.name={study}",
        f"storage.url=sqlite:///{args.work.resolve()}/studies.db",
        f"out_dir={args.work.resolve()}/search"]
    result = adaptation.main(["--work", str(args.work), "--models", str(args.models),
                              "--epochs", str(args.epochs), *overrides])

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{args.work.resolve()}/"
                               "studies.db").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    trained = [t for t in trials if "skipped" not in t.user_attrs]
    within = [t for t in trained if t.user_attrs["train_memory_kib"] <= budget]
    result.update(budget_kib=budget, median_all_kib=round(median, 1),
                  trials=len(trials), trained=len(trained), trained_within_budget=len(within),
                  skipped_over_budget=sum("train_memory_kib" in t.user_attrs.get("skipped", "")
                                          for t in trials))
    lines = ["`python scripts/edge_budget_search.py --work DIR --trials "
             f"{args.trials} --models {args.models} --epochs {args.epochs}`: the search "
             f"`{' '.join(overrides[:2])}`, {args.models} members of its front spread over "
             "latency exported with the export recipe, each fine-tuned on the shifted camera "
             "of `adaptation.md` with every scheme (1 thread).", "",
             f"Budget: `budget.train_memory_kib={budget}` with `finetune.update=all` (half the "
             f"median `all` step of 1,000 sampled architectures, {median:,.0f} KiB, at batch "
             f"{FinetuneConfig().batch}). {len(trials)} trials completed; "
             f"{result['skipped_over_budget']} were over the budget and skipped untrained; of the "
             f"{len(trained)} scored, {len(within)} are within it.", ""] + adaptation.table(result)
    out = adaptation.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget_search.json").write_text(json.dumps(result, indent=1))
    (out / "budget_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
