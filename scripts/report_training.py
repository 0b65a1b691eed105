"""Train the report's models on another machine (a GPU box); export and measure them here.

``python -m search.report`` trains the found models and baselines it lacks with the export
recipe, one after the other, then measures every model on this machine. On 2 CPU cores the ten
baselines alone take more than two hours. Where a GPU machine is at hand but the latencies must
be measured here (the host that the device model describes):

    python scripts/report_training.py pack DIR OVERRIDES...     # here: what to train
    python scripts/report_training.py train DIR --workers 19    # there: the trainings
    python scripts/report_training.py unpack DIR OVERRIDES...   # here: export them
    python -m search.report OVERRIDES...                        # here: measure (no training)

OVERRIDES are the report's own (``+device=rpi4 study.name=NAME out=DIR ...``), the same in all
three commands here.

``pack`` writes ``DIR/jobs.json`` (the recipe and its fingerprint, the study's chosen trials'
architectures, the baselines, the dataset's checksum) and ``DIR/train.safetensors`` (the
training split's indices and the teacher's soft labels for it), so the other machine needs no
teacher, no study and no Optuna: torch, timm, safetensors, numpy, omegaconf, the dataset and
this repository. By default it packs what the report would train (missing or trained with
another recipe); ``--all`` packs every model, to train them all on one machine.

``train`` trains every packed model in ``--workers`` parallel processes (models of this size
keep a GPU busy only a fraction of the time one at a time), with TF32 off (float32 as on the
CPU), and writes ``DIR/trained/NAME.safetensors`` (the trained float weights) and
``NAME.json`` (seconds, device); run again, it trains only what is missing.

``unpack`` checks that the pack's recipe fingerprint is this config's, rebuilds each trained
model from its weights and writes its folder as the report would have (the same export, int8
calibration and metrics, the training's seconds and device recorded); the report then finds
the models up to date and only measures them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOBS_VERSION = 1


def compose(overrides: list[str]):
    """The report's config for ``overrides`` (as ``python -m search.report`` composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from search.config import CONF_DIR, load
    from search.report import with_default_device

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load(with_default_device(hydra_compose(config_name="config",
                                                      overrides=overrides)))


def data_digest(x) -> str:
    """A checksum of the training images the jobs use (the same dataset on both machines)."""
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]


def read_jobs(folder: Path) -> dict:
    from search.errors import UserError

    path = folder / "jobs.json"
    try:
        jobs = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is missing or unreadable ({exc}); write it with "
                        "`python scripts/report_training.py pack DIR OVERRIDES...`") from None
    if jobs.get("version") != JOBS_VERSION:
        raise UserError(f"{path} is version {jobs.get('version')!r}, this script reads "
                        f"{JOBS_VERSION}: pack again with this checkout")
    return jobs


def context(cfg):
    """The report's dataset, teacher, found models' folder and the baselines' folder."""
    from search.data import load_dataset
    from search.errors import UserError
    from search.teacher import TeacherCache

    if not cfg.out:
        raise UserError("say where the report goes, as for the report: out=DIR")
    dataset = load_dataset(cfg.data, cfg.seed)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    exports = Path(cfg.report.exports or Path(cfg.out_dir) / "export")
    return dataset, teacher, exports, Path(cfg.out) / "baselines"


# ---- pack (here) ----------------------------------------------------------------------------
def pack(folder: Path, overrides: list[str], every: bool) -> None:
    from search.baselines import baseline_fingerprint
    from search.export import load_study, recipe_fingerprint, select_trials, study_names
    from search.report import recorded

    cfg = compose(overrides)
    dataset, teacher, exports, baselines = context(cfg)
    teacher.model()  # trained here if needed: its accuracy is part of the fingerprint
    fingerprint = recipe_fingerprint(cfg, teacher)
    jobs = []
    if cfg.study.name in study_names(cfg):
        for t in select_trials(cfg, load_study(cfg)):
            folder_t = exports / f"trial_{t.number}"
            if every or recorded(folder_t, "training", "fingerprint") != fingerprint \
                    or recorded(folder_t, "arch_id") != t.user_attrs.get("arch_id"):
                jobs.append({"name": f"trial_{t.number}", "kind": "trial", "trial": t.number,
                             "arch_id": t.user_attrs.get("arch_id"),
                             "arch_json": t.user_attrs["arch_json"]})
    for name in cfg.report.baselines:
        if every or recorded(baselines / name, "training", "fingerprint") != \
                baseline_fingerprint(fingerprint, name):
            jobs.append({"name": name, "kind": "baseline"})
    write_pack(folder, cfg, dataset, teacher, jobs, overrides, cfg.study.name)
    print(f"{len(jobs)} models to train in {folder}: "
          + (", ".join(j["name"] for j in jobs) or "none (all up to date; --all packs them)"))


def write_pack(folder: Path, cfg, dataset, teacher, jobs: list[dict], overrides: list[str],
               study: str | None) -> None:
    """``folder/jobs.json`` and ``folder/train.safetensors``: ``jobs`` (``{"name", "kind":
    "trial", "arch_id", "arch_json"}`` or ``{"name", "kind": "baseline"}``) to train with
    ``cfg``'s export recipe on the training split, with the teacher's soft labels."""
    from safetensors.torch import save_file

    from search.export import final_recipe, recipe_fingerprint

    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    soft = teacher.logits(train_idx)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"train_idx": train_idx.contiguous(),
               "teacher_logits": soft.contiguous()},
              str(folder / "train.safetensors"))
    x = dataset.train_x[train_idx]
    (folder / "jobs.json").write_text(json.dumps({
        "version": JOBS_VERSION, "fingerprint": recipe_fingerprint(cfg, teacher),
        "recipe": final_recipe(cfg).__dict__, "seed": cfg.seed,
        "data": {"kind": cfg.data.kind, "root": cfg.data.root, "name": cfg.data.name,
                 "in_chans": dataset.in_chans, "num_classes": dataset.num_classes,
                 "train_images": len(train_idx), "digest": data_digest(x)},
        "study": study, "overrides": overrides, "jobs": jobs,
        "date": time.strftime("%Y-%m-%d")}, indent=1))


def packed_dataset(jobs: dict, data_root: str | None):
    """The packed dataset, from ``data_root`` where given (its folder on this machine)."""
    from search.config import DataConfig
    from search.data import load_dataset
    from search.errors import UserError

    d = jobs["data"]
    try:
        return load_dataset(DataConfig(name=d["name"], kind=d["kind"],
                                       root=data_root or d["root"], in_chans=d["in_chans"],
                                       num_classes=d["num_classes"]), jobs["seed"])
    except UserError as exc:
        raise UserError(f"{exc} (this script reads the dataset from --data-root DIR, else "
                        f"from the packed {d['root'] or 'default folder'})") from None


# ---- train (the GPU machine) ----------------------------------------------------------------
def _load_training(folder: Path, jobs: dict, data_root: str | None, device):
    """(images, labels, teacher logits) of the packed training split, on ``device``."""
    from safetensors.torch import load_file

    from search.errors import UserError

    d = jobs["data"]
    dataset = packed_dataset(jobs, data_root)
    packed = load_file(str(folder / "train.safetensors"))
    idx = packed["train_idx"]
    x = dataset.train_x[idx]
    if data_digest(x) != d["digest"]:
        raise UserError(f"the training images here ({data_root or d['root']}) are not the ones "
                        "packed (checksum differs): copy the same dataset, or pass --data-root")
    return (x.to(device), dataset.train_y[idx].to(device),
            packed["teacher_logits"].to(device))


def result_files(folder: Path, name: str, seed: int, packed_seed: int) -> tuple[Path, Path]:
    """A training's (weights ``.safetensors``, record ``.json``): under ``trained/`` for the
    packed seed (what ``unpack`` exports), ``seeds/NAME-sK`` for the others."""
    base = (folder / "trained" / name if seed == packed_seed
            else folder / "seeds" / f"{name}-s{seed}")
    return base.parent / f"{base.name}.safetensors", base.parent / f"{base.name}.json"


def _worker(rank: int, tasks: list[tuple[str, int]], folder: str, data_root: str | None,
            device: str, threads: int) -> None:
    import torch
    from safetensors.torch import save_file

    from search.baselines import train_baseline
    from search.proxy import train_final
    from search.train import Recipe
    from spaces.arch import Arch

    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on a CPU
    torch.backends.cudnn.allow_tf32 = False
    out = Path(folder)
    jobs = read_jobs(out)
    x, y, soft = _load_training(out, jobs, data_root, torch.device(device))
    recipe = Recipe(**jobs["recipe"])
    where = (f"cuda: {torch.cuda.get_device_name(0)}" if device.startswith("cuda")
             else "cpu")
    by_name = {j["name"]: j for j in jobs["jobs"]}
    for name, seed in tasks:
        job = by_name[name]
        start = time.time()
        if job["kind"] == "trial":
            model = train_final(Arch.from_json(job["arch_json"]), x, y, soft, recipe, seed=seed)
        else:
            model = train_baseline(name, jobs["data"]["in_chans"], jobs["data"]["num_classes"],
                                   x, y, soft, recipe, seed=seed)
        seconds = time.time() - start
        weights, record = result_files(out, name, seed, jobs["seed"])
        weights.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights.parent / f".{weights.name}.tmp"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.rename(weights)
        record.write_text(json.dumps({
            "name": name, "seed": seed, "fingerprint": jobs["fingerprint"],
            "seconds": round(seconds, 1), "device": where, "torch": torch.__version__,
            "tf32": False}, indent=1))
        print(f"[{rank}] {name} seed {seed}: {seconds:.0f} s on {where}", flush=True)


def train(folder: Path, workers: int, device: str, data_root: str | None, threads: int,
          seeds: list[int] | None = None, only: list[str] | None = None) -> None:
    """Train the packed models (``only`` these names) with the packed seed, or with each of
    ``seeds`` (the same split, teacher and recipe; another initialization and batch order:
    the seed-to-seed spread of the final training)."""
    import multiprocessing as mp

    import torch

    from search.errors import UserError

    jobs = read_jobs(folder)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [j["name"] for j in jobs["jobs"]]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise UserError(f"--only {','.join(unknown)}: not packed; packed: {', '.join(names)}")
    _load_training(folder, jobs, data_root, "cpu")  # the dataset's checksum, before any start
    tasks = [(n, seed) for seed in (seeds or [jobs["seed"]]) for n in names
             if (not only or n in only)
             and not result_files(folder, n, seed, jobs["seed"])[1].is_file()]
    n_workers = min(workers, len(tasks))
    print(f"{len(tasks)} trainings to run on {device} in {n_workers} processes", flush=True)
    start = time.time()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, tasks[r::n_workers], str(folder), data_root,
                                               device, threads))
             for r in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    wall = time.time() - start
    log = folder / ("seeds" if seeds else "trained") / "run.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps({
        "wall_seconds": round(wall, 1), "workers": n_workers, "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__, "trained": [f"{n} seed {s}" for n, s in tasks]},
        indent=1))
    print(f"{len(tasks)} trainings in {wall:.0f} s wall", flush=True)
    if failed:
        sys.exit(f"{len(failed)} worker(s) failed (exit codes {failed}); run the same command "
                 "again to train what is missing")


# ---- seeds (here or there) ------------------------------------------------------------------
def seed_spread(folder: Path, data_root: str | None = None) -> dict:
    """Test accuracy (float32, torch) of every trained seed of every packed model: writes
    ``DIR/seeds.json`` and prints each model's mean, spread and seeds."""
    import statistics

    import torch
    from safetensors.torch import load_file

    from search.baselines import build_baseline
    from search.train import accuracy, predict_logits
    from spaces.arch import Arch
    from spaces.build import build_model

    jobs = read_jobs(folder)
    d = jobs["data"]
    dataset = packed_dataset(jobs, data_root)
    rows = {}
    for job in jobs["jobs"]:
        packed = result_files(folder, job["name"], jobs["seed"], jobs["seed"])[1]
        files = sorted([packed, *(folder / "seeds").glob(f"{job['name']}-s*.json")])
        accs = {}
        for info_path in (f for f in files if f.is_file()):
            info = json.loads(info_path.read_text())
            if job["kind"] == "trial":
                model = build_model(Arch.from_json(job["arch_json"]), pruned=True)
            else:
                model = build_baseline(job["name"], d["in_chans"], d["num_classes"])
            model.load_state_dict(load_file(str(info_path.with_suffix(".safetensors"))))
            with torch.no_grad():
                accs[info.get("seed", jobs["seed"])] = accuracy(
                    predict_logits(model.eval(), dataset.test_x), dataset.test_y)
        if not accs:
            continue
        values = list(accs.values())
        rows[job["name"]] = {
            "kind": job["kind"], "seeds": {str(k): round(v, 5) for k, v in sorted(accs.items())},
            "mean": round(statistics.mean(values), 5),
            "spread": round(max(values) - min(values), 5),
            "stdev": round(statistics.stdev(values), 5) if len(values) > 1 else None}
        print(f"{job['name']}: mean {100 * rows[job['name']]['mean']:.2f}%, spread "
              f"{100 * rows[job['name']]['spread']:.2f} points over {len(values)} seeds ("
              + ", ".join(f"{k}: {100 * v:.2f}" for k, v in sorted(accs.items())) + ")",
              flush=True)
    out = {"about": "test accuracy (float32, torch) of the final training with other seeds "
                    "(initialization and batch order; the same split, teacher and recipe)",
           "fingerprint": jobs["fingerprint"], "test_images": len(dataset.test_y),
           "models": rows, "date": time.strftime("%Y-%m-%d")}
    (folder / "seeds.json").write_text(json.dumps(out, indent=1))
    return out


# ---- unpack (here) --------------------------------------------------------------------------
def unpack(folder: Path, overrides: list[str]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from search.baselines import build_baseline, write_baseline
    from search.errors import UserError
    from search.export import load_study, recipe_fingerprint, write_trial
    from spaces.arch import Arch
    from spaces.build import build_model

    cfg = compose(overrides)
    jobs = read_jobs(folder)
    dataset, teacher, exports, baselines = context(cfg)
    fingerprint = recipe_fingerprint(cfg, teacher)
    if jobs["fingerprint"] != fingerprint:
        raise UserError(f"{folder / 'jobs.json'} was packed with another recipe or teacher "
                        f"(fingerprint {jobs['fingerprint']}, this config's {fingerprint}): "
                        "pack again with the report's overrides")
    trials = {}
    if any(j["kind"] == "trial" for j in jobs["jobs"]):
        trials = {t.number: t for t in load_study(cfg).trials}
    done = 0
    for job in jobs["jobs"]:
        weights, info_path = result_files(folder, job["name"], jobs["seed"], jobs["seed"])
        if not info_path.is_file():
            print(f"{job['name']}: not trained yet, skipped")
            continue
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") != fingerprint:
            raise UserError(f"{info_path} was trained from another pack (fingerprint "
                            f"{info.get('fingerprint')}, this config's {fingerprint}): delete "
                            f"{folder / 'trained'} and train again")
        if job["kind"] == "trial":
            trial = trials.get(job["trial"])
            if trial is None or trial.user_attrs.get("arch_id") != job["arch_id"]:
                raise UserError(f"trial {job['trial']} of study {cfg.study.name} is not the "
                                f"architecture packed ({job['arch_id']}): pack again")
            model = build_model(Arch.from_json(job["arch_json"]), pruned=True)
        else:
            model = build_baseline(job["name"], dataset.in_chans, dataset.num_classes)
        try:
            model.load_state_dict(load_file(str(weights)))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise UserError(f"{weights} does not hold {job['name']}'s trained weights ("
                            f"{str(exc).splitlines()[0][:200]}): delete it and "
                            f"{info_path.name}, and train again (`train` trains only what "
                            "is missing)") from None
        model.eval()
        if job["kind"] == "trial":
            write_trial(cfg, trial, model, dataset, teacher, exports, info["seconds"],
                        info["device"])
        else:
            write_baseline(cfg, job["name"], model, dataset, teacher, baselines,
                           info["seconds"], info["device"])
        done += 1
        print(f"{job['name']}: exported (trained {info['seconds']:.0f} s on {info['device']})",
              flush=True)
    print(f"{done} of {len(jobs['jobs'])} models exported; now `python -m search.report "
          f"{' '.join(overrides)}` measures them")


def main() -> None:
    from search.errors import guarded, silence_library_warnings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: write what the report would train")
    p.add_argument("dir", type=Path)
    p.add_argument("--all", action="store_true", help="every model, not only missing ones")
    p.add_argument("overrides", nargs="*")
    t = sub.add_parser("train", help="on the training machine")
    t.add_argument("dir", type=Path)
    t.add_argument("--workers", type=int, default=8)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--data-root", help="the dataset's folder there, if not the packed one")
    t.add_argument("--threads", type=int, default=1, help="torch threads per process")
    t.add_argument("--seeds", help="comma-separated training seeds instead of the packed one "
                   "(written to DIR/seeds/, for the seed-to-seed spread; unpack ignores them)")
    t.add_argument("--only", help="comma-separated model names (default: every packed one)")
    n = sub.add_parser("seeds", help="test accuracy of every trained seed (DIR/seeds.json)")
    n.add_argument("dir", type=Path)
    n.add_argument("--data-root", help="the dataset's folder, if not the packed one")
    u = sub.add_parser("unpack", help="here: export the trained models for the report")
    u.add_argument("dir", type=Path)
    u.add_argument("overrides", nargs="*")
    args, extra = ap.parse_known_args()  # overrides may follow the options too
    if args.cmd == "train" and (args.workers < 1 or args.threads < 1):
        ap.error("--workers and --threads take a whole number of at least 1")
    if extra and args.cmd not in ("pack", "unpack") or any("=" not in e for e in extra):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    if args.cmd in ("pack", "unpack"):  # (it imports Optuna, which the training machine lacks)
        silence_library_warnings()
    if args.cmd == "pack":
        guarded(lambda: pack(args.dir, args.overrides, args.all))
    elif args.cmd == "train":
        try:
            seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
        except ValueError:
            ap.error(f"--seeds {args.seeds!r}: give whole numbers, comma-separated (e.g. 1,2)")
        only = args.only.split(",") if args.only else None
        guarded(lambda: train(args.dir, args.workers, args.device, args.data_root,
                              args.threads, seeds, only))
    elif args.cmd == "seeds":
        guarded(lambda: seed_spread(args.dir, args.data_root))
    else:
        guarded(lambda: unpack(args.dir, args.overrides))


if __name__ == "__main__":
    main()
