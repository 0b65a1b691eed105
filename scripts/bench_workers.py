"""Benchmark: many workers on one study, and the storage and sampler overhead per trial.

    python scripts/bench_workers.py                      # both parts, PostgreSQL started here
    python scripts/bench_workers.py --part overhead      # overhead per trial only (~3 min)
    python scripts/bench_workers.py --part throughput    # trials per minute only (~12 min)

1. Throughput: trials per minute with 1, 2 and 4 worker processes (``search.threads=1`` each)
   sharing one PostgreSQL study, with the ``zero_cost`` proxy (what storage and sampler cost)
   and with the default distilled proxy on Fashion-MNIST. Trials per minute are counted from
   the first trial's start to the last trial's end (worker start-up, the same for every worker
   count, is reported apart).
2. Overhead: 1,000 trials with the real sampler (NSGA-II), the real space, budget checks and
   progress, with the proxy replaced by an instant random score; per-trial wall time minus
   the time spent pricing and scoring, at trials 0-100 and 900-1000, for SQLite, journal and
   PostgreSQL.

Needs the PostgreSQL server programs (``apt-get install postgresql``); without them the
PostgreSQL rows are skipped. Prints a Markdown table and writes it, with the raw figures, to
``scripts/results/workers/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "scripts" / "results" / "workers"


def load_trials(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)

    from search.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, 30)).trials


# ---------------------------------------------------------------------------------------------
# 1. Throughput


def throughput(url: str, proxy: str, workers: int, n_trials: int, work: Path) -> dict:
    name = f"bench-{proxy}-{workers}w-{int(time.time())}"
    args = [sys.executable, "-m", "search", "+device=rpi4", "storage=postgresql",
            f"storage.url={url}", f"study.name={name}", f"search.n_trials={n_trials}",
            "search.threads=1", f"cache_dir={ROOT / '.cache' / 'edgenas'}"]
    if proxy == "zero_cost":
        args.append("proxy=zero_cost")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    start = time.time()
    procs = [subprocess.Popen(args + [f"out_dir={work / name / str(i)}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.time() - start
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"a worker failed:\n{err[-2000:]}")
    trials = [t for t in load_trials(url, name) if t.state.name == "COMPLETE"]
    assert len(trials) == n_trials, f"{len(trials)} complete trials, wanted {n_trials}"
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    span = (last - first).total_seconds()
    per_trial = statistics.median((t.datetime_complete - t.datetime_start).total_seconds()
                                  for t in trials)
    return {"proxy": proxy, "workers": workers, "trials": n_trials,
            "trials_per_min": round(60 * n_trials / span, 2), "span_s": round(span, 1),
            "wall_s": round(wall, 1), "startup_s": round(wall - span, 1),
            "median_trial_s": round(per_trial, 2)}


def throughput_part(url: str, work: Path, quick: bool) -> list[dict]:
    from search.teacher import TeacherCache  # noqa: F401 (fail early if the project is broken)

    rows = []
    plan = [("zero_cost", 120 if not quick else 40), ("distill", 8 if not quick else 4)]
    # The teacher is trained and cached by a first one-trial run, outside the timings.
    warm = throughput(url, "distill", 1, 1, work)
    print(f"warm-up (teacher cached): {warm['wall_s']} s", flush=True)
    for proxy, n in plan:
        for workers in (1, 2, 4):
            row = throughput(url, proxy, workers, n, work)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. Overhead per trial


def overhead(url: str, n_trials: int) -> dict:
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    from hydra import compose, initialize_config_dir

    import search.objective as objective_mod
    from latency_models.model import DeviceModel
    from search.config import CONF_DIR, load
    from search.objective import Objective
    from search.run import run_trials
    from search.storage import open_storage
    from search.study import open_study, study_meta

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = load(compose(config_name="config", overrides=[
            "+device=rpi4", "proxy=zero_cost", f"search.n_trials={n_trials}",
            f"study.name=overhead-{int(time.time() * 1000)}", f"storage.url={url}"]))
    rng = random.Random(0)
    spent = {"objective": 0.0}
    real_costs = objective_mod.costs

    def timed_costs(arch, model):
        t = time.perf_counter()
        try:
            return real_costs(arch, model)
        finally:
            spent["objective"] += time.perf_counter() - t

    objective_mod.costs = timed_costs
    objective_mod.zero_cost_scores = lambda arch, images, seed: {
        "naswot": rng.random(), "synflow": 0.0, "params": 0.0, "cost_s": 0.0}
    device_model = DeviceModel.load(cfg.device.model_path())
    objective = Objective(cfg, 1, 28, 10, device_model, None,
                          torch.zeros(64, 1, 28, 28, dtype=torch.uint8))
    storage = open_storage(url, cfg.search.heartbeat_s, cfg.storage.retry_s)
    study = open_study(cfg, storage, study_meta(cfg, "bench", device_model.hash))
    marks: list[tuple[float, float]] = []

    def mark(study: optuna.Study, trial) -> None:
        marks.append((time.perf_counter(), spent["objective"]))

    t0 = (time.perf_counter(), 0.0)
    original = study.optimize

    def optimize_with_mark(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), mark]
        return original(*args, **kwargs)

    study.optimize = optimize_with_mark
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        run_trials(cfg, study, objective, 0, n_trials)
    points = [t0, *marks]

    def window(a: int, b: int) -> float:
        (ta, oa), (tb, ob) = points[a], points[b]
        return 1000 * ((tb - ta) - (ob - oa)) / (b - a)

    k = min(100, len(marks))
    return {"trials": len(marks), "first_100_ms": round(window(0, k), 1),
            "last_100_ms": round(window(len(points) - 1 - k, len(points) - 1), 1),
            "objective_ms_per_trial": round(1000 * spent["objective"] / len(marks), 2)}


def overhead_part(pg_url: str | None, work: Path, n_trials: int) -> list[dict]:
    rows = []
    storages = [("sqlite", f"sqlite:///{work}/overhead.db"),
                ("journal", f"journal:{work}/overhead.journal")]
    if pg_url:
        storages.append(("postgresql", pg_url))
    for kind, url in storages:
        # Each in a fresh process: nothing cached from the previous storage.
        code = ("import json, bench_workers; "
                f"print(json.dumps(bench_workers.overhead({url!r}, {n_trials})))")
        env = dict(os.environ, PYTHONWARNINGS="ignore",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]))
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        row = {"storage": kind, **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------


def table(throughput_rows: list[dict], overhead_rows: list[dict]) -> str:
    lines = []
    if throughput_rows:
        lines += [("| proxy | workers | trials | trials/min | speed-up vs 1 worker "
                   "| median trial s | start-up s |"), "|---|---|---|---|---|---|---|"]
        base = {r["proxy"]: r["trials_per_min"] for r in throughput_rows if r["workers"] == 1}
        for r in throughput_rows:
            lines.append(f"| {r['proxy']} | {r['workers']} | {r['trials']} | "
                         f"{r['trials_per_min']} | {r['trials_per_min'] / base[r['proxy']]:.2f}x"
                         f" | {r['median_trial_s']} | {r['startup_s']} |")
        lines.append("")
    if overhead_rows:
        lines += [("| storage | trials | overhead ms/trial, trials 0-100 | overhead ms/trial, "
                   "last 100 | pricing ms/trial (not overhead) |"), "|---|---|---|---|---|"]
        for r in overhead_rows:
            lines.append(f"| {r['storage']} | {r['trials']} | {r['first_100_ms']} | "
                         f"{r['last_100_ms']} | {r['objective_ms_per_trial']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "throughput", "overhead"], default="all")
    parser.add_argument("--trials", type=int, default=1000, help="overhead study size")
    parser.add_argument("--quick", action="store_true", help="fewer trials (a smoke run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgenas-bench-"))
    work.chmod(0o755)
    import local_postgres as pg  # beside this script
    pg_url, data = None, work / "pg"
    try:
        try:
            pg_url = pg.start(data)
        except pg.PostgresMissing as exc:
            print(f"PostgreSQL rows skipped: {exc}")
        t_rows = (throughput_part(pg_url, work, args.quick)
                  if args.part in ("all", "throughput") and pg_url else [])
        o_rows = (overhead_part(pg_url, work, args.trials)
                  if args.part in ("all", "overhead") else [])
    finally:
        if pg_url:
            pg.stop(data)
        shutil.rmtree(work, ignore_errors=True)
    md = table(t_rows, o_rows)
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "command": "python scripts/bench_workers.py " + " ".join(sys.argv[1:])}
    suffix = "" if args.part == "all" else f"_{args.part}"
    (OUT / f"results{suffix}.json").write_text(json.dumps(
        {**meta, "throughput": t_rows, "overhead": o_rows}, indent=1))
    (OUT / f"results{suffix}.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
