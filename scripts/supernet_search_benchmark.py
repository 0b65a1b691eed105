"""Search quality at equal wall time: the supernet search against today's default search and
against random sampling scored by the supernet.

    python scripts/supernet_search_benchmark.py --minutes 10             # everything, here
    python scripts/supernet_search_benchmark.py --minutes 10 --pack-only # searches, then pack
    python scripts/report_training.py train WORK/pack --workers 16       # there (a GPU box)
    python scripts/supernet_search_benchmark.py --minutes 10             # here: the figures

1. Searches, ``--seeds`` sampler seeds each, on this machine (``search.threads`` threads),
   each given ``--minutes`` of trials (``search.minutes``; counted once its proxy is ready,
   so the teacher, the distilled proxy's calibration and the supernet's training or loading,
   all cached once, are not part of it):

   - ``supernet``: ``proxy=supernet``, TPE, as many trials as fit;
   - ``default``: today's default search (``proxy=distill``, TPE);
   - ``random``: ``proxy=supernet`` with ``search.sampler=random``.

   A search that did not finish (killed) is deleted and run again whole, so every search has
   had exactly its minutes.
2. Each study's Pareto front (proxy score against predicted ``--device`` latency) is trained
   with the export recipe (``python -m search.export``'s, ``export.epochs``): packed as
   ``scripts/report_training.py`` packs the report's models (``WORK/pack``), trained here
   unless ``--pack-only`` (one process; a GPU when torch sees one), or on another machine
   with ``report_training.py train``. An architecture on several fronts trains once.
3. Each trained model's test accuracy (as deployed: pruned, fake-quantized at its bits, in
   torch, on the 10,000 test images), and each study's hypervolume of (test accuracy,
   predicted latency) over its front, all studies from one reference (the lowest accuracy and
   the largest latency of any front member, both scaled to the range every front spans);
   the supernet search against random search seed by seed and against the default's median.

Figures go to ``scripts/results/supernet/search.json`` and ``search.md``. Everything resumes:
finished searches and trained models are kept.
"""

from __future__ import annotations

import argparse
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
ARMS = {"supernet": ["proxy=supernet", "search.sampler=tpe"],
        "default": ["search.sampler=tpe"],
        "random": ["proxy=supernet", "search.sampler=random"]}


def study_name(device: str, arm: str, seed: int) -> str:
    return f"search-quality-{device}-{arm}-s{seed}"


def run_searches(args, common: list[str], storage: str, work: Path) -> dict:
    """Every arm's search for every seed (finished ones kept); their records."""
    import optuna

    done_file = work / "searches.json"
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
                          "proxy_seconds": summary["proxy"]["seconds"]}
            done_file.write_text(json.dumps(done, indent=1))
            print(f"{name}: {done[name]['trials']} trials", flush=True)
    return done


def fronts(storage: str, names: list[str]) -> dict[str, list]:
    """Each study's Pareto front (by its proxy score and predicted latency)."""
    import optuna

    from search.study import pareto_trials

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return {n: pareto_trials(optuna.load_study(study_name=n, storage=storage)) for n in names}


def test_accuracy(pack: Path, jobs: dict, job: dict, dataset) -> float | None:
    """A trained front member's test accuracy as deployed (None: not trained yet)."""
    import torch
    from safetensors.torch import load_file

    from search.train import accuracy, predict_logits
    from spaces.arch import Arch
    from spaces.build import build_model
    from spaces.quant import attach_fake_quant

    weights, info = result_files(pack, job["name"], jobs["seed"], jobs["seed"])
    if not info.is_file():
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
    storage = f"sqlite:///{work}/studies.db"
    common = [f"+device={args.device}", f"storage.url={storage}", *args.overrides]
    searches = run_searches(args, common, storage, work)
    names = [study_name(args.device, arm, seed) for seed in range(args.seeds) for arm in ARMS]
    front = fronts(storage, names)
    cfg = compose(common)
    dataset = load_dataset(cfg.data, cfg.seed)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    jobs = {}
    for trials in front.values():
        for t in trials:
            arch_id = t.user_attrs["arch_id"]
            jobs.setdefault(arch_id, {"name": f"arch_{arch_id}", "kind": "trial",
                                      "trial": t.number, "arch_id": arch_id,
                                      "arch_json": t.user_attrs["arch_json"]})
    pack = work / "pack"
    write_pack(pack, cfg, dataset, teacher, list(jobs.values()), common, None)
    print(f"{len(jobs)} distinct architectures on {len(front)} fronts, packed in {pack}",
          flush=True)
    packed = json.loads((pack / "jobs.json").read_text())
    for info in (pack / "trained").glob("*.json"):  # trained with another recipe: again
        if info.name != "run.json" and \
                json.loads(info.read_text()).get("fingerprint") != packed["fingerprint"]:
            info.unlink()
    if not args.pack_only:
        from scripts.report_training import train

        train(pack, 1, "auto", None, cfg.search.threads)
    acc = {a: test_accuracy(pack, packed, j, dataset) for a, j in jobs.items()}
    missing = sorted(a for a, v in acc.items() if v is None)
    if missing:
        print(f"{len(missing)} of {len(acc)} front members not trained yet: train them "
              f"(`python scripts/report_training.py train {pack}`) and run this again")
        return 1
    report(args, searches, front, acc, packed)
    return 0


def report(args, searches: dict, front: dict, acc: dict, packed: dict) -> None:
    points = {}
    for seed in range(args.seeds):
        for arm in ARMS:
            name = study_name(args.device, arm, seed)
            points[(arm, seed)] = [(acc[t.user_attrs["arch_id"]], t.user_attrs["latency_ms"])
                                   for t in front[name]]
    volumes = normalized_volumes(points)
    compared = compare_samplers(volumes, ["supernet", "default"], args.seeds)
    default_median = compared["samplers"]["default"]["median"]
    sup = compared["samplers"]["supernet"]
    out = {
        "about": "each study's Pareto front trained with the export recipe and tested; the "
                 "normalized hypervolume of (test accuracy as deployed, predicted "
                 f"{args.device} latency), one reference for all studies",
        "minutes": args.minutes, "seeds": args.seeds, "recipe": packed["recipe"],
        "fingerprint": packed["fingerprint"],
        "studies": {study_name(args.device, arm, seed): {
            **searches[study_name(args.device, arm, seed)],
            "front": len(points[(arm, seed)]),
            "hypervolume": round(volumes[(arm, seed)], 5),
            "front_test_accuracy": sorted(round(a, 4) for a, _ in points[(arm, seed)])}
            for (arm, seed) in sorted(points)},
        **compared,
        "targets": {"supernet_above_random_same_seed": sup["pairs_above_random_same_seed"],
                    "of": args.seeds,
                    "supernet_median_above_default_median": sup["median"] > default_median},
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
    lines += ["", f"- supernet search above random search with the same seed: "
                  f"{sup['pairs_above_random_same_seed']} of {args.seeds}",
              f"- median hypervolume: supernet {sup['median']:.4f}, default "
              f"{default_median:.4f}, random {compared['random_median']:.4f}"]
    text = "\n".join(lines) + "\n"
    (out_dir / "search.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
