"""Search quality at equal wall time: the default search against today's distilled search
and against random sampling scored by the supernet.

    python scripts/supernet_search_benchmark.py --minutes 10             # everything, here
    python scripts/supernet_search_benchmark.py --minutes 10 --pack-only # searches, then pack
    python scripts/report_training.py train WORK/pack --workers 16       # there (a GPU box)
    python scripts/supernet_search_benchmark.py --minutes 10             # here: the figures

1. Searches, ``--seeds`` sampler seeds each, on this machine (``search.threads`` threads,
   one search at a time), each given ``--minutes`` of trials (``search.minutes``; counted
   once its proxy is ready, so the teacher, the distilled proxy's calibration and the
   supernet's training or loading, all cached once, are not part of it):

   - ``distill``: the distilled search (``proxy=distill``, TPE, no re-scoring: the default
     before the supernet ranked), pinned by explicit overrides;
   - ``supernet``: ``proxy=supernet``, TPE, nothing promoted;
   - ``random``: ``proxy=supernet`` with ``search.sampler=random``, nothing promoted;
   - ``default``: whatever ``python -m search +device=rpi4`` runs, with no overrides.

   A search that did not finish (killed) is deleted and run again whole, so every search has
   had exactly its minutes. A finished search's record and Pareto front are written to the
   results (``search/fronts.json``), so the trainings can go on on another machine or after
   the work folder is lost.
2. Each study's Pareto front (proxy score against predicted ``--device`` latency) is trained
   with the export recipe (``python -m search.export``'s, ``export.epochs``): packed as
   ``scripts/report_training.py`` packs the report's models (``WORK/pack``), trained here
   unless ``--pack-only``, ``--workers`` trainings at a time with ``--threads`` threads each
   (two of one thread on 2 cores: two torch jobs of two threads each ran ten times slower),
   or on another machine with ``report_training.py train``. An architecture on several
   fronts trains once. Each trained model's test accuracy (as deployed: pruned,
   fake-quantized at its bits, in torch, on the 10,000 test images) is added to
   ``search/trainings.csv`` as soon as it is measured: a stopped run goes on where it was.
3. Each study's hypervolume of (test accuracy, predicted latency) over its front, all
   studies from one reference (the lowest accuracy and the largest latency of any front
   member, both scaled to the range every front spans); the default against the distilled
   search and against random search, seed by seed.

Figures go to ``scripts/results/supernet/search.json`` and ``search.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.outcome_benchmark import compare_samplers, normalized_volumes  # noqa: E402
from scripts.report_training import compose, result_files, write_pack  # noqa: E402

OUT = ROOT / "scripts" / "results" / "supernet"
# arm -> its overrides of the search (the default search: none)
ARMS = {"distill": ["proxy=distill", "search.sampler=tpe", "proxy.rescore=null",
                    "proxy.promote.to=null"],
        "supernet": ["proxy=supernet", "search.sampler=tpe", "proxy.rescore=null",
                     "proxy.promote.to=null"],
        "random": ["proxy=supernet", "search.sampler=random", "proxy.rescore=null",
                   "proxy.promote.to=null"],
        "default": []}
TRAININGS = ["arch_id", "fingerprint", "test_accuracy", "seconds", "device"]


def study_name(device: str, arm: str, seed: int) -> str:
    return f"search-quality-{device}-{arm}-s{seed}"


def run_searches(args, common: list[str], storage: str, work: Path, durable: Path) -> dict:
    """Every arm's search for every seed (finished ones kept); their records and fronts
    (``durable/fronts.json``)."""
    import optuna

    done_file = durable / "fronts.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    for seed in range(args.seeds):
        for arm, overrides in ARMS.items():
            name = study_name(args.device, arm, seed)
            if (done.get(name, {}).get("minutes"), done.get(name, {}).get("overrides")) == (
                    args.minutes, args.overrides):  # finished with these settings: kept
                continue
            try:  # a search killed before its end: run it again whole
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:
                pass
            cmd = [sys.executable, "-m", "search", *common, *overrides,
                   f"study.name={name}", f"search.sampler_seed={seed}",
                   f"search.minutes={args.minutes}", "search.n_trials=1000000",
                   f"out_dir={work / name}"]
            print("$ " + " ".join(cmd), flush=True)
            start = time.time()
            with open(work / f"{name}.log", "w") as log:
                if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
                    sys.exit(f"{name} failed; see {work / name}.log. Run the same command "
                             "again to go on")
            summary = json.loads((work / name / "summary.json").read_text())
            done[name] = {"arm": arm, "seed": seed, "minutes": args.minutes,
                          "overrides": args.overrides,
                          "command_seconds": round(time.time() - start, 1),
                          "trials": summary["trials"]["complete"],
                          "proxy_seconds": summary["proxy"]["seconds"],
                          "front": front_of(storage, name)}
            durable.mkdir(parents=True, exist_ok=True)
            done_file.write_text(json.dumps(done, indent=1))
            print(f"{name}: {done[name]['trials']} trials", flush=True)
    return done


def front_of(storage: str, name: str) -> list[dict]:
    """A study's Pareto front (by its proxy score and predicted latency; promoted scores
    trusted first), what the benchmark needs of each member."""
    import optuna

    from search.pareto import fidelity
    from search.study import pareto_trials

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return [{"trial": t.number, "arch_id": t.user_attrs["arch_id"],
             "arch_json": t.user_attrs["arch_json"], "latency_ms": t.user_attrs["latency_ms"],
             "score": t.values[0], "fidelity": fidelity(t)}
            for t in pareto_trials(optuna.load_study(study_name=name, storage=storage))]


def read_trainings(path: Path, fingerprint: str) -> dict[str, float]:
    """The test accuracy of each architecture trained with the recipe of ``fingerprint``."""
    if not path.is_file():
        return {}
    with open(path) as f:
        return {r["arch_id"]: float(r["test_accuracy"]) for r in csv.DictReader(f)
                if r["fingerprint"] == fingerprint}


def add_training(path: Path, row: dict) -> None:
    """One measured training added to ``path`` (rewritten whole, atomically)."""
    from spaces.files import write_text

    rows = []
    if path.is_file():
        with open(path) as f:
            rows = [r for r in csv.DictReader(f)
                    if (r["arch_id"], r["fingerprint"]) != (row["arch_id"], row["fingerprint"])]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRAININGS)
    writer.writeheader()
    writer.writerows(sorted(rows + [row], key=lambda r: (r["fingerprint"], r["arch_id"])))
    write_text(path, buf.getvalue())


def test_accuracy(pack: Path, jobs: dict, job: dict, dataset) -> float | None:
    """A trained front member's test accuracy as deployed (None: not trained yet, or with
    another recipe)."""
    import torch
    from safetensors.torch import load_file

    from search.train import accuracy, predict_logits
    from spaces.arch import Arch
    from spaces.build import build_model
    from spaces.quant import attach_fake_quant

    weights, info = result_files(pack, job["name"], jobs["seed"], jobs["seed"])
    if not info.is_file() or json.loads(info.read_text()).get("fingerprint") != \
            jobs["fingerprint"]:
        return None
    arch = Arch.from_json(job["arch_json"])
    model = build_model(arch, pruned=True)
    model.load_state_dict(load_file(str(weights)))
    if any(b < 32 for b in arch.bits):
        attach_fake_quant(model, arch)
    with torch.no_grad():
        return accuracy(predict_logits(model.eval(), dataset.test_x), dataset.test_y)


def main(argv: list[str]) -> int:
    from search.errors import guarded

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="each search's minutes")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="rpi4", help="the device the searches price")
    ap.add_argument("--work", default=".cache/edgenas/search-quality")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--pack-only", action="store_true",
                    help="searches and the pack only: train on another machine")
    ap.add_argument("--workers", type=int, default=2, help="trainings at a time, here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each training")
    ap.add_argument("overrides", nargs="*", help="more overrides for every search and the "
                    "recipe, e.g. export.epochs=4 (a smoke run: data=synthetic)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.seeds < 1:
        ap.error("--minutes must be above 0 and --seeds at least 1")
    return guarded(lambda: run(args))


def run(args) -> int:
    from search.data import load_dataset
    from search.teacher import TeacherCache

    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    durable = Path(args.out) / "search"
    storage = f"sqlite:///{work}/studies.db"
    common = [f"+device={args.device}", f"storage.url={storage}", *args.overrides]
    searches = run_searches(args, common, storage, work, durable)
    names = [study_name(args.device, arm, seed) for seed in range(args.seeds) for arm in ARMS]
    front = {n: searches[n]["front"] for n in names}
    cfg = compose(common)
    dataset = load_dataset(cfg.data, cfg.seed)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    jobs = {}
    for members in front.values():
        for m in members:
            jobs.setdefault(m["arch_id"], {"name": f"arch_{m['arch_id']}", "kind": "trial",
                                           "trial": m["trial"], "arch_id": m["arch_id"],
                                           "arch_json": m["arch_json"]})
    pack = work / "pack"
    from search.export import recipe_fingerprint

    teacher.model()  # trained here if needed: its accuracy is part of the fingerprint
    fingerprint = recipe_fingerprint(cfg, teacher)
    trainings = durable / "trainings.csv"
    acc = read_trainings(trainings, fingerprint)
    todo = [j for a, j in jobs.items() if a not in acc]
    write_pack(pack, cfg, dataset, teacher, todo, common, None)
    packed = json.loads((pack / "jobs.json").read_text())
    for info in (pack / "trained").glob("*.json"):  # trained with another recipe: again
        if info.name != "run.json" and \
                json.loads(info.read_text()).get("fingerprint") != packed["fingerprint"]:
            info.unlink()
    print(f"{len(jobs)} distinct architectures on {len(front)} fronts, "
          f"{len(acc.keys() & jobs.keys())} trained before; {len(todo)} packed in {pack}",
          flush=True)
    if not args.pack_only and todo:
        from scripts.report_training import train

        # a pair at a time, so that what is measured is written before a stop
        for i in range(0, len(todo), args.workers):
            train(pack, args.workers, "auto", None, args.threads,
                  only=[j["name"] for j in todo[i:i + args.workers]])
            measure(pack, packed, todo[i:i + args.workers], dataset, trainings, acc)
    measure(pack, packed, todo, dataset, trainings, acc)  # trained elsewhere, unpacked here
    missing = sorted(a for a in jobs if a not in acc)
    if missing:
        print(f"{len(missing)} of {len(jobs)} front members not trained yet: train them "
              f"(`python scripts/report_training.py train {pack}`) and run this again")
        return 1
    report(args, searches, front, acc, packed)
    return 0


def measure(pack: Path, packed: dict, jobs: list[dict], dataset, trainings: Path,
            acc: dict) -> None:
    """The test accuracy of each of ``jobs`` trained in ``pack`` and not yet measured, added
    to ``acc`` and to the trainings file."""
    for job in jobs:
        if job["arch_id"] in acc:
            continue
        value = test_accuracy(pack, packed, job, dataset)
        if value is None:
            continue
        info = json.loads(result_files(pack, job["name"], packed["seed"],
                                       packed["seed"])[1].read_text())
        acc[job["arch_id"]] = value
        add_training(trainings, {"arch_id": job["arch_id"], "fingerprint": packed["fingerprint"],
                                 "test_accuracy": round(value, 6), "seconds": info["seconds"],
                                 "device": info["device"]})


def report(args, searches: dict, front: dict, acc: dict, packed: dict) -> None:
    points = {}
    for seed in range(args.seeds):
        for arm in ARMS:
            name = study_name(args.device, arm, seed)
            points[(arm, seed)] = [(acc[m["arch_id"]], m["latency_ms"]) for m in front[name]]
    volumes = normalized_volumes(points)
    compared = compare_samplers(volumes, [a for a in ARMS if a != "random"], args.seeds)
    above = {rival: sum(volumes[("default", seed)] > volumes[(rival, seed)]
                        for seed in range(args.seeds)) for rival in ("distill", "random")}
    out = {
        "about": "each study's Pareto front trained with the export recipe and tested; the "
                 "normalized hypervolume of (test accuracy as deployed, predicted "
                 f"{args.device} latency), one reference for all studies",
        "minutes": args.minutes, "seeds": args.seeds, "recipe": packed["recipe"],
        "fingerprint": packed["fingerprint"],
        "arms": {arm: overrides or "(none: python -m search's defaults)"
                 for arm, overrides in ARMS.items()},
        "studies": {study_name(args.device, arm, seed): {
            **{k: v for k, v in searches[study_name(args.device, arm, seed)].items()
               if k != "front"},
            "front": len(points[(arm, seed)]),
            "promoted": sum(m.get("fidelity") == "distill" and arm != "distill"
                            for m in front[study_name(args.device, arm, seed)]),
            "hypervolume": round(volumes[(arm, seed)], 5),
            "front_test_accuracy": sorted(round(a, 4) for a, _ in points[(arm, seed)])}
            for (arm, seed) in sorted(points)},
        **compared,
        "targets": {"default_above_distill_same_seed": above["distill"],
                    "default_above_random_same_seed": above["random"], "of": args.seeds},
        "date": time.strftime("%Y-%m-%d"),
        "command": "python scripts/supernet_search_benchmark.py " + " ".join(sys.argv[1:])}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "search.json").write_text(json.dumps(out, indent=1))
    lines = [f"# Search quality at equal wall time ({args.minutes:g} minutes of trials each)",
             "", f"`{out['command']}`: {out['about']}.", "",
             "| search | seed | trials | front | hypervolume | front test accuracy |",
             "|---|---|---|---|---|---|"]
    for (arm, seed) in sorted(points):
        s = out["studies"][study_name(args.device, arm, seed)]
        accs = s["front_test_accuracy"]
        lines.append(f"| {arm} | {seed} | {s['trials']} | {s['front']} | "
                     f"{s['hypervolume']:.4f} | {100 * accs[0]:.2f}-{100 * accs[-1]:.2f}% |")
    medians = {a: compared["samplers"][a]["median"] for a in ARMS if a != "random"}
    lines += ["", f"- default above distill with the same seed: {above['distill']} of "
                  f"{args.seeds}; above random: {above['random']} of {args.seeds}",
              "- median hypervolume: " + ", ".join(f"{a} {v:.4f}" for a, v in medians.items())
              + f", random {compared['random_median']:.4f}"]
    text = "\n".join(lines) + "\n"
    (out_dir / "search.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
