"""The outcome benchmark: does the search beat hand-designed edge models on the device?

    python scripts/outcome_benchmark.py                    # the full benchmark
    python scripts/outcome_benchmark.py --trials 16 --epochs 2   # a cheaper run (say so)

1. ``python -m search +device=rpi4`` with ``--trials`` trials (the first of ``--samplers``, sampler
   seed 0).
2. ``python -m search.report``: its Pareto front and the ten baselines trained with the same
   recipe (``export.epochs=--epochs``, same teacher), all exported to fp32 and int8 ONNX and
   scored the same way (accuracy with onnxruntime, host latency measured side by side, rpi4
   latency and energy predicted from the graphs); dominance figures against each baseline.
3. Hypervolume: the same search with sampler seeds 0..``--seeds``-1 for each sampler of
   ``--samplers`` (default: the search's default sampler), and random search with the same
   seeds and trial budget (same data split, teacher and proxy); the hypervolume of each
   study's (proxy score, predicted latency) points against one reference point (score 0, or
   the lowest score any of these studies saw where scores go below it, as fidelity+naswot's
   do; the largest latency any of them saw), and each sampler's runs against the median of
   the random ones.
4. Copies the report (JSON, Markdown, PNG, HTML), every scored ONNX file and ``command.txt``
   (the exact command, step times) to ``--results`` as soon as the report is done, and
   ``hypervolume.json`` (with its searches' times) once the searches of step 3 are.
   ``--skip-report`` runs steps 1 and 3 only (the samplers' comparison) and leaves the
   results' report files as they are.

Everything resumes: studies continue where they stopped, exported and trained models whose
recipe is unchanged are kept, and a finished report of the same study and recipe is not
measured again. Training runs on a GPU when torch sees one (``search.device``). To train on
a GPU machine and measure here, run ``scripts/report_training.py`` (pack, train there, unpack)
with the report step's overrides before this command: it then finds the models trained and
only measures them (``command.txt`` says where they were trained).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(cmd: list[str], log: Path) -> float:
    """Run a step, its output to the console and ``log``; returns its seconds."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            fh.write(line)
            if "step/s]" not in line and "it/s]" not in line:  # progress bars: log only
                sys.stdout.write(line)
        if proc.wait() != 0:
            sys.exit(f"step failed (exit {proc.returncode}); see {log}. Run the same command "
                     "again to resume")
    return time.time() - start


def load(storage: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=storage)


def scored_trials(storage: str, name: str) -> list:
    """The study's finished feasible trials (the ones the proxy scored)."""
    from search.pareto import feasible
    from search.study import complete_trials

    return [t for t in complete_trials(load(storage, name)) if feasible(t)]


def finished_trials(storage: str, name: str) -> int:
    """Complete trials of the study ``name`` (0 where there is no such study yet)."""
    import optuna

    from search.study import complete_trials

    if not Path(storage[len("sqlite:///"):]).is_file():
        return 0
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        return 0
    return len(complete_trials(load(storage, name)))


def trainings_words(report_json: Path) -> str:
    """Where the report's models were trained and for how long: the report step's time counts
    only the trainings made in it (none where ``scripts/report_training.py`` trained them on
    another machine before)."""
    import torch

    if not report_json.is_file():
        return ""
    models = json.loads(report_json.read_text())["models"]
    by_device: dict[str, list[float]] = {}
    for m in models:
        by_device.setdefault(m.get("training_device") or "unrecorded", []).append(
            m.get("training_s") or 0.0)
    here = "cuda" if torch.cuda.is_available() else "cpu"
    elsewhere = [d for d in by_device if not d.startswith(here)]
    return ("\nfinal trainings of the report's models (seconds each, as recorded):\n" + "".join(
        f"  {device}: {len(secs)} models, median {statistics.median(secs):.0f} s, "
        f"{sum(secs):.0f} s summed\n" for device, secs in by_device.items())
        + (f"  ({', '.join(elsewhere)}: not this machine; trained there with "
           "scripts/report_training.py pack, train and unpack before this command, with the "
           "report step's overrides)\n" if elsewhere else ""))


def compare_samplers(volumes: dict[tuple[str, int], float], samplers: list[str],
                     seeds: int) -> dict:
    """Each sampler's hypervolumes (by seed) against random search's median and, seed by
    seed, against random search with the same seed. ``volumes`` maps (sampler, seed)."""
    random_median = statistics.median(volumes[("random", seed)] for seed in range(seeds))
    out = {}
    for s in samplers:
        vs = [volumes[(s, seed)] for seed in range(seeds)]
        out[s] = {"median": round(statistics.median(vs), 5),
                  "above_random_median": sum(v > random_median for v in vs), "of": seeds,
                  "pairs_above_random_same_seed": sum(
                      volumes[(s, seed)] > volumes[("random", seed)] for seed in range(seeds))}
    return {"random_median": round(random_median, 5), "samplers": out}


def normalized_volumes(points: dict) -> dict:
    """Each study's hypervolume with both objectives scaled to the range every study's
    points span together, from their common nadir (the lowest score and the largest latency
    seen): a check that the comparison does not hinge on the reference point (from score 0,
    the area is mostly the fastest trial's latency times its score)."""
    from search.pareto import hypervolume

    every = [p for pts in points.values() for p in pts]
    lo, hi = min(a for a, _ in every), max(a for a, _ in every)
    slowest = max(lat for _, lat in every)
    return {k: hypervolume([((a - lo) / ((hi - lo) or 1.0), lat / slowest) for a, lat in pts],
                           1.0) for k, pts in points.items()}


def main() -> None:
    from search.config import SAMPLERS, SearchConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="rpi4")
    ap.add_argument("--trials", type=int, default=32, help="each search's trial budget")
    ap.add_argument("--epochs", type=int, default=4, help="final training (export recipe)")
    ap.add_argument("--seeds", type=int, default=3, help="sampler seeds for the hypervolume")
    ap.add_argument("--work", default=".cache/edgenas/outcome", help="studies, models, logs")
    ap.add_argument("--results", default="scripts/results/outcome")
    ap.add_argument("--samplers", default=SearchConfig.sampler,
                    help="comma-separated samplers compared with random search for the "
                    f"hypervolume, the first also runs the reported search (of {SAMPLERS})")
    ap.add_argument("--skip-hypervolume", action="store_true")
    ap.add_argument("--skip-report", action="store_true",
                    help="only the searches and the hypervolume comparison")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides for every step, e.g. "
                    "search.threads=4 (a smoke run: data=synthetic proxy=zero_cost)")
    args = ap.parse_args()
    samplers = [s for s in args.samplers.split(",") if s]
    if not samplers or any(s not in SAMPLERS or s == "random" for s in samplers):
        ap.error(f"--samplers {args.samplers!r}: give one or more of "
                 f"{[s for s in SAMPLERS if s != 'random']}, comma-separated (random search is "
                 "what they are compared with)")
    if args.skip_report and args.skip_hypervolume:
        ap.error("--skip-report and --skip-hypervolume together leave nothing to do")

    work, results = (ROOT / args.work).resolve(), ROOT / args.results
    work.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{work}/studies.db"
    log = work / "benchmark.log"
    py = sys.executable
    common = [f"+device={args.device}", f"storage.url={storage}",
              f"search.n_trials={args.trials}", *args.overrides]
    times_file = work / "times.json"  # seconds per step, summed over resumed invocations
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}
    started = time.time()

    def step(key: str, cmd: list[str]) -> None:
        times[key] = times.get(key, 0.0) + run(cmd, log)
        times_file.write_text(json.dumps(times, indent=1))

    def search(sampler: str, seed: int) -> str:
        name = f"outcome-{args.device}-{sampler}-s{seed}"
        key = f"search {sampler} seed {seed}"
        if finished_trials(storage, name) >= args.trials:  # done: no need to start it again
            print(f"{name}: {args.trials} trials already done", flush=True)
            return name
        step(key, [py, "-m", "search", *common, f"study.name={name}",
                   f"search.sampler={sampler}", f"search.sampler_seed={seed}",
                   f"out_dir={work}/{name}"])
        return name

    def write_command() -> None:
        total = sum(times.values())
        (results / "command.txt").write_text(
            f"python scripts/outcome_benchmark.py {' '.join(sys.argv[1:])}\n\n"
            "seconds per step (summed over resumed runs):\n"
            + "".join(f"  {k}: {v:.0f}\n" for k, v in times.items())
            + f"total: {total:.0f} s ({total / 60:.1f} min)\n"
            + trainings_words(results / "report.json"))

    # The report right after its study: it is the result a user reads, and on 2 cores the
    # whole benchmark spans more than one sitting, so it comes first; the hypervolume's
    # searches (step 3) follow.
    main_study = search(samplers[0], 0)
    if args.skip_report:
        run_hypervolume(args, samplers, storage, main_study, search, times, results)
        return
    report_dir = work / "report"
    # A finished report of this very study and recipe is kept: measuring it again would only
    # re-time the host latencies (and change the committed figures by their noise).
    stamp_file = report_dir / "benchmark-stamp.json"
    stamp = {"study": main_study, "finished_trials": finished_trials(storage, main_study),
             "epochs": args.epochs, "overrides": common}
    if (report_dir / "report.json").is_file() and stamp_file.is_file() \
            and json.loads(stamp_file.read_text()) == stamp:
        print(f"report of {main_study} already done ({report_dir}); delete {stamp_file.name} "
              "there to measure it again", flush=True)
    else:
        stamp_file.unlink(missing_ok=True)
        step("report", [py, "-m", "search.report", *common, f"study.name={main_study}",
                        f"out_dir={work}/{main_study}", f"export.epochs={args.epochs}",
                        "report.plotly_js=cdn", f"out={report_dir}"])
        stamp_file.write_text(json.dumps(stamp, indent=1))

    # ---- the report's results ----
    results.mkdir(parents=True, exist_ok=True)
    report = json.loads((report_dir / "report.json").read_text())
    onnx_dir = results / "onnx"
    shutil.rmtree(onnx_dir, ignore_errors=True)
    for m in report["models"]:
        for precision, path in m["files"].items():
            dest = onnx_dir / m["name"] / Path(path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            m["files"][precision] = str(dest.relative_to(results))
    (results / "report.json").write_text(json.dumps(report, indent=1))
    for name in ("report.md", "report.png", "report.html"):
        shutil.copyfile(report_dir / name, results / name)
    (results / "hypervolume.json").unlink(missing_ok=True)  # an earlier run's; step 3 redoes it
    write_command()

    if not args.skip_hypervolume:
        run_hypervolume(args, samplers, storage, main_study, search, times, results)
        write_command()
    print(f"results in {results}: {sum(times.values()) / 60:.1f} min of steps in all, "
          f"{(time.time() - started) / 60:.1f} min this invocation")


def run_hypervolume(args, samplers: list[str], storage: str, main_study: str, search,
                    times: dict, results: Path) -> None:
    """Step 3: the remaining searches, their hypervolumes, ``hypervolume.json``."""
    from search.pareto import hypervolume
    from search.study import proxy_score_name

    # Seed by seed (NSGA-II's first generation and TPE's start-up trials are random search
    # with the same seed, so each pair differs only by what the sampler proposed after them).
    studies = {(s, seed): main_study if (s, seed) == (samplers[0], 0) else search(s, seed)
               for seed in range(args.seeds) for s in [*samplers, "random"]}
    trials = {k: scored_trials(storage, name) for k, name in studies.items()}
    points = {k: [(t.values[0], t.values[1]) for t in ts] for k, ts in trials.items()}
    ref = max(lat for pts in points.values() for _, lat in pts)
    # score 0 (fidelity and accuracy are in [0, 1]); fidelity+naswot's standardized sum can be
    # negative: then the lowest score any of these studies saw
    ref_score = min([0.0] + [a for pts in points.values() for a, _ in pts])
    volumes = {k: hypervolume(p, ref, ref_score) for k, p in points.items()}
    compared = compare_samplers(volumes, samplers, args.seeds)
    normalized = normalized_volumes(points)
    compared_normalized = compare_samplers(normalized, samplers, args.seeds)
    scores = sorted({proxy_score_name(t) for ts in trials.values() for t in ts})
    hv = {"reference": {"score": ref_score, "accuracy": 0.0, "latency_ms": ref},
          "objectives": f"proxy score ({', '.join(scores)}; validation split) and predicted "
                        f"{args.device} latency, ms", "proxy_score": scores,
          "trials": args.trials, "seeds": args.seeds,
          "studies": {f"{s}-s{seed}": {"hypervolume": round(v, 5),
                                        "normalized_hypervolume": round(
                                            normalized[(s, seed)], 5),
                                        "trials": len(points[(s, seed)]),
                                        "seconds": round(times.get(f"search {s} seed {seed}",
                                                                   0.0))}
                      for (s, seed), v in sorted(volumes.items())},
          **compared, "normalized": {
              "reference": "lowest score and largest latency of all studies' points, both "
                           "objectives scaled to the range they span", **compared_normalized},
          "date": time.strftime("%Y-%m-%d"),
          "command": f"python scripts/outcome_benchmark.py {' '.join(sys.argv[1:])}"}
    if "nsga2" in compared["samplers"]:  # the keys of files written before --samplers
        c = compared["samplers"]["nsga2"]
        hv.update(nsga2_median=c["median"], nsga2_above_random_median=c["above_random_median"],
                  of=c["of"], pairs_nsga2_above_random_same_seed=c[
                      "pairs_above_random_same_seed"])
    for label, vols, comp in (("hypervolume", volumes, compared),
                              ("normalized", normalized, compared_normalized)):
        for s, c in comp["samplers"].items():
            mine = ", ".join(f"{vols[(s, k)]:.4f}" for k in range(args.seeds))
            random = ", ".join(f"{vols[('random', k)]:.4f}" for k in range(args.seeds))
            print(f"{label}: {s} {mine} | random {random} (median "
                  f"{comp['random_median']:.4f}) -> {c['above_random_median']} of {c['of']} "
                  "above")
    results.mkdir(parents=True, exist_ok=True)
    (results / "hypervolume.json").write_text(json.dumps(hv, indent=1))


if __name__ == "__main__":
    main()
