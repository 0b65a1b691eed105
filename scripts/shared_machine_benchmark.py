"""A search on a shared machine: the default search's trial time beside another CPU-heavy
program, over the same without it.

    python scripts/shared_machine_benchmark.py                 # the default search
    python scripts/shared_machine_benchmark.py --trials 30 proxy=supernet

Four runs of the same search (``--trials`` trials each, a fresh study each, one after the
other on a machine with nothing else running):

- ``now``: as ``python -m search +device=rpi4`` runs today (threads chosen from the free cores
  before every trial), alone and beside the load;
- ``before``: two threads whatever the load, OpenMP waiting as it does by default
  (``GOMP_SPINCOUNT=300000``, GNU OpenMP's own default), as the search ran before, alone and
  beside the load (at most ``--before-loaded-trials`` trials: it can be very slow).

The load is one competing torch training with 2 threads (a small CNN on random images in a
loop, OpenMP at its defaults), started before the search and stopped after it. Each run's
median trial time comes from its study (each trial's start to end). Results:
``scripts/results/workers/shared.json`` and ``shared.md``; targets: ``now`` beside the load
at most 2.0 times ``now`` alone, and ``now`` alone no slower than ``before`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "scripts" / "results" / "workers"
LOAD = """
import torch, torch.nn as nn
torch.set_num_threads(2)
net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
while True:
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
"""


def run(name: str, trials: int, loaded: bool, env: dict, overrides: list[str], work: Path,
        timeout_s: float) -> dict:
    """One search of ``trials`` trials in a fresh study; its trials' durations."""
    import optuna

    storage = f"sqlite:///{work / name}.db"
    Path(f"{work / name}.db").unlink(missing_ok=True)
    load = None
    if loaded:
        load_env = {k: v for k, v in os.environ.items()
                    if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        load = subprocess.Popen([sys.executable, "-c", LOAD], env=load_env)
        time.sleep(3)  # the load at full speed before the search starts
    cmd = [sys.executable, "-m", "search", "+device=rpi4", f"storage.url={storage}",
           f"out_dir={work / name}", f"search.n_trials={trials}", f"study.name={name}",
           *overrides]
    start = time.time()
    try:
        with open(work / f"{name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log,
                           stderr=subprocess.STDOUT, timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if load is not None:
            load.kill()
            load.wait()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=storage)
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
               if t.datetime_complete is not None and t.datetime_start is not None]
    return {"trials": len(seconds), "median_trial_s": round(statistics.median(seconds), 2)
            if seconds else None, "trial_s": [round(s, 1) for s in seconds],
            "wall_s": round(time.time() - start, 1), "timed_out": timed_out, "env": env}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="trials of each run")
    ap.add_argument("--before-loaded-trials", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    ap.add_argument("--work", default=".cache/edgenas/shared-machine")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("overrides", nargs="*", help="overrides of the search (the default: none)")
    args = ap.parse_args(argv)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    before = {"GOMP_SPINCOUNT": "300000"}
    runs = {
        "now_alone": run("now_alone", args.trials, False, {}, args.overrides, work,
                         args.timeout),
        "now_loaded": run("now_loaded", args.trials, True, {}, args.overrides, work,
                          args.timeout),
        "before_alone": run("before_alone", args.trials, False, before,
                            ["search.threads=2", *args.overrides], work, args.timeout),
        "before_loaded": run("before_loaded", args.before_loaded_trials, True, before,
                             ["search.threads=2", *args.overrides], work, args.timeout),
    }
    med = {k: v["median_trial_s"] for k, v in runs.items()}
    ratio = {"now": round(med["now_loaded"] / med["now_alone"], 2),
             "before": (round(med["before_loaded"] / med["before_alone"], 2)
                        if med["before_loaded"] else None)}
    out = {"about": "median trial time of the search beside one competing 2-thread torch "
                    "training, over the same alone; now = the search as it runs today, "
                    "before = 2 threads whatever the load",
           "overrides": args.overrides, "runs": runs, "loaded_over_alone": ratio,
           "targets": {"now_loaded_over_alone_at_most_2": ratio["now"] <= 2.0,
                       "now_alone_not_slower_than_before": med["now_alone"]
                       <= med["before_alone"] * 1.05},
           "cpu": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
           "command": "python scripts/shared_machine_benchmark.py " + " ".join(argv)}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shared.json").write_text(json.dumps(out, indent=1))
    lines = ["# A search on a shared machine", "", f"`{out['command']}`: {out['about']}.", "",
             "| run | trials | median trial s | loaded / alone |", "|---|---|---|---|"]
    for name in ("now", "before"):
        for kind in ("alone", "loaded"):
            r = runs[f"{name}_{kind}"]
            lines.append(f"| {name} {kind} | {r['trials']} | {r['median_trial_s']} | "
                         f"{ratio[name] if kind == 'loaded' else ''} |")
    text = "\n".join(lines) + "\n"
    (out_dir / "shared.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
