"""Train one hand-designed baseline exactly as the report does, and print what it reaches.

    python scripts/baseline_check.py squeezenet1_1
    python scripts/baseline_check.py squeezenet1_1 --changes '{"clip_grad": null}'  # without
    python scripts/baseline_check.py mobilenetv3_small_050 export.epochs=1

The baseline trains with the export recipe and its own changes
(:data:`search.baselines.RECIPE_CHANGES`, or ``--changes`` as JSON in their place) on the
search's data, split and cached teacher, as ``python -m search.report`` trains it; then its
float model's test accuracy (torch), the training time and the recipe are printed and appended
to ``scripts/results/baselines/checks.jsonl``. Nothing is exported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "baselines"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a baseline of search.config.BASELINES")
    parser.add_argument("--changes", default=None,
                        help="recipe changes as JSON instead of the baseline's own")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_intermixed_args(argv)

    import torch
    from hydra import compose, initialize_config_dir

    from search import baselines
    from search.config import CONF_DIR, load
    from search.data import load_dataset
    from search.export import final_recipe
    from search.teacher import TeacherCache
    from search.train import accuracy, predict_logits

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = load(compose(config_name="config", overrides=["+device=rpi4", *args.overrides]))
    if args.changes is not None:
        baselines.RECIPE_CHANGES[args.name] = json.loads(args.changes)
    torch.set_num_threads(cfg.search.thread_count())
    dataset = load_dataset(cfg.data, cfg.seed)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    device = cfg.search.torch_device()
    export_recipe = final_recipe(cfg)
    start = time.time()
    model = baselines.train_baseline(  # the export recipe with the baseline's changes
        args.name, dataset.in_chans, dataset.num_classes, dataset.train_x[train_idx].to(device),
        dataset.train_y[train_idx].to(device), teacher.logits(train_idx).to(device),
        export_recipe, seed=cfg.seed)
    seconds = time.time() - start
    acc = accuracy(predict_logits(model, dataset.test_x), dataset.test_y)
    record = {"baseline": args.name, "test_accuracy": round(acc, 4),
              "seconds": round(seconds, 1), "device": device, "threads": torch.get_num_threads(),
              "recipe": baselines.baseline_recipe(args.name, export_recipe).__dict__,
              "changes": baselines.RECIPE_CHANGES.get(args.name),
              "overrides": args.overrides, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "checks.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{args.name}: test accuracy {100 * acc:.2f}% after {seconds / 60:.1f} min on "
          f"{device} (recipe changes: {record['changes']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
