"""`python -m search`: compose the parts and run the study's remaining trials."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import torch
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from latency_models.model import DeviceModel
from latency_models.prediction import LATENCY_WORDS
from search.budget import SURPLUS_ATTR, check_slot, wait_for_slot
from search.cli import suggested_command
from search.config import BUDGETS, Config
from search.data import load_for
from search.errors import UserError
from search.objective import Objective, fastest_possible
from search.pareto import FrontTracker, fidelity
from search.promote import next_promotion, promote, promoted_config
from search.proxies import make_proxy
from search.storage import open_storage, storage_error
from search.study import (
    SCORE_MEANING,
    complete_trials,
    open_study,
    pareto_trials,
    proxy_accuracy,
    proxy_hash,
    rescored,
    study_meta,
)
from search.urls import redact
from search.watch import TrialWatch, interrupted_trial, on_terminate_interrupt
from spaces.files import write_text
from spaces.threads import ThreadChooser

__all__ = ["bits_summary", "check_budgets", "energy_note", "load_device_model", "MAX_FAILURES",
           "pareto_rows", "print_table", "run_search", "run_trials", "score_name",
           "write_outputs"]


def load_device_model(cfg: Config) -> DeviceModel:
    return DeviceModel.load(cfg.device.model_path())


def energy_note(model: DeviceModel) -> str:
    """Where the device's energy figures come from, in words."""
    if model.energy_source == "measured":
        return "measured: per-op energy fitted to the device's energy measurements"
    if model.energy_source == "simulated":
        return "simulated: per-op energy from a simulator's table"
    return (f"modelled: device power ({model.power_w:g} W, {model.power_source or 'assumed'}) "
            "x predicted latency")


def check_budgets(cfg: Config, objective: Objective) -> None:
    wanted = {k: getattr(cfg.budget, k) for k in BUDGETS if getattr(cfg.budget, k) is not None}
    if not wanted:
        return
    best = fastest_possible(objective)
    for key, budget in wanted.items():
        if budget < best[key]:
            raise UserError(f"budget.{key}={budget} cannot be met: the smallest {key} any "
                            f"architecture in space {cfg.space.name!r} reaches on "
                            f"{cfg.device.name} is {best[key]:.4g}. Raise the budget or "
                            "narrow the space to smaller choices")


def bits_summary(bits: list[int]) -> str:
    return " ".join(f"{b}b:{bits.count(b)}" for b in sorted(set(bits), reverse=True))


def pareto_rows(study: optuna.Study) -> list[dict]:
    rows = []
    again = rescored(study)
    for t in pareto_trials(study):
        a = t.user_attrs
        rows.append({
            # the accuracy objective holds the proxy's score (proxy.score); its validation
            # accuracy is recorded beside it
            "trial": t.number, "proxy_score": t.values[0],
            "proxy_accuracy": proxy_accuracy(t),
            "latency_ms": a["latency_ms"], "energy_mj": a["energy_mj"], "params": a["params"],
            "macs": a["macs"], "size_kib": a["size_kib"], "bits": bits_summary(a["bits"]),
            # (trials of studies from before memory was priced have none)
            "peak_memory_kib": a.get("peak_memory_kib"),
            "train_memory_kib": a.get("train_memory_kib"),
            "latency_source": a["provenance"]["latency"]
            + ("*" if a["provenance"].get("extrapolated") else ""),
            "arch_id": a["arch_id"],
            "fidelity": fidelity(t),  # the proxy whose score is proxy_score
        })
        if again:  # proxy.rescore: the distilled proxy's score of each member
            r = again.get(str(t.number), {})
            rows[-1].update(rescore_score=r.get("score"), rescore_accuracy=r.get("accuracy"))
    return rows


def score_name(cfg: Config) -> str:
    """What the study's accuracy objective holds: ``proxy.score``, or NASWOT for
    ``proxy=zero_cost``."""
    return make_proxy(cfg).score_name()


def print_table(cfg: Config, study: optuna.Study, rows: list[dict], out_dir: Path,
                console: Console, energy_note: str) -> None:
    name = score_name(cfg)
    proxy = make_proxy(cfg)
    trained = proxy.trains
    table = Table(title=f"Pareto-optimal trials of {study.study_name} ({cfg.device.name})")
    again = bool(rows) and "rescore_score" in rows[0]
    # which proxy scored each row, where a search promotes (or its study holds several)
    mixed = bool(cfg.proxy.promote.to) or len({r["fidelity"] for r in rows}) > 1
    columns = ["trial", *(["fidelity", "score"] if mixed else
                          [] if name == "accuracy" else [name]),
               *(["proxy acc"] if trained else []),
               *([f"{cfg.proxy.rescore} {cfg.proxy.score}"] if again else []),
               "latency ms", "energy mJ", "params",
               "MACs", "size KiB", "peak KiB", "train KiB", "bit-widths", "latency from"]
    for col in columns:
        table.add_column(col, justify="right" if col not in ("bit-widths", "latency from")
                         else "left")
    for r in rows:
        acc = [] if name == "accuracy" and not mixed else [f"{r['proxy_score']:.4f}"]
        if trained:
            acc.append("-" if r["proxy_accuracy"] is None else f"{100 * r['proxy_accuracy']:.2f}%")
        if again:
            acc.append("-" if r["rescore_score"] is None else f"{r['rescore_score']:.4f}")
        table.add_row(str(r["trial"]), *([r["fidelity"]] if mixed else []), *acc,
                      f"{r['latency_ms']:.3f}", f"{r['energy_mj']:.3f}",
                      f"{r['params']:,}", f"{r['macs']:,}", f"{r['size_kib']:.1f}",
                      *("-" if r[k] is None else f"{r[k]:,.0f}"
                        for k in ("peak_memory_kib", "train_memory_kib")),
                      r["bits"], r["latency_source"])
    console.print(table)
    if name != "accuracy":
        console.print(f"{name}: {SCORE_MEANING[name]}.", highlight=False)
    if proxy.trains:
        console.print(f"proxy acc: {proxy.accuracy_meaning}.", highlight=False)
    console.print("peak KiB: activation memory of one inference (batch 1, the layers' "
                  f"precisions); train KiB: one fine-tuning step (update={cfg.finetune.update}, "
                  f"batch {cfg.finetune.batch}), python -m search.finetune.", highlight=False)
    if mixed:
        console.print(f"fidelity: the proxy whose {cfg.proxy.score} score the row holds "
                      "(proxy.promote: an architecture promoted to a more trusted proxy "
                      "appears with that score only; the others are placed on its scale); "
                      "select=best exports the best row of the most trusted fidelity.",
                      highlight=False)
    if again:
        console.print(f"{cfg.proxy.rescore} {cfg.proxy.score}: the front scored again by the "
                      "distilled proxy after the search (proxy.rescore); the rows and "
                      "select=best follow it.", highlight=False)
    console.print("latency from: " + " | ".join(f"{word} ({meaning})" for word, meaning
                                                in LATENCY_WORDS.items())
                  + "; * = extrapolated (ops outside the sizes the device was measured at "
                  f"carry over 10% of the price).\nEnergy is {energy_note} (see "
                  f"conf/device/{cfg.device.name}.yaml).")
    console.print(f"study: {study.study_name} in {redact(cfg.storage.url)}")
    console.print(f"outputs: {out_dir} (pareto.csv, summary.json, config.json)")
    if rows:
        console.print("next: export the most accurate model of the front (select=pareto "
                      "exports all of them):", highlight=False)
        console.print("  " + suggested_command("search.export", "select=best",
                                               f"out={out_dir / 'export'}"),
                      highlight=False, soft_wrap=True, markup=False)


def run_search(cfg: Config) -> None:
    console = Console(width=None if Console().is_terminal else 160)
    threads = ThreadChooser(cfg.search.threads)  # one look at the load, kept for the trials
    torch.set_num_threads(threads.choose())
    torch.manual_seed(cfg.seed)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own messages say what failed
    device_model = load_device_model(cfg)
    dataset = load_for(cfg)
    proxy = make_proxy(cfg)
    for note in dataset.notes + [proxy.size_note(dataset)]:
        if note:
            console.print(note, style="yellow", highlight=False, soft_wrap=True,
                          markup=False)
    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    promoted = (make_proxy(promoted_config(cfg, cfg.proxy.promote.to))
                if cfg.proxy.promote.to else None)
    objective = Objective(cfg, dataset.in_chans, dataset.size, dataset.num_classes,
                          device_model, proxy, dataset.train_x[train_idx[:64]], promoted)
    check_budgets(cfg, objective)
    storage = open_storage(cfg.storage.url, cfg.search.heartbeat_s, cfg.storage.retry_s)
    meta = study_meta(cfg, dataset.fingerprint(), device_model.hash)
    study = open_study(cfg, storage, meta)
    done = len(complete_trials(study))
    remaining = cfg.search.n_trials - done
    out_dir = Path(cfg.out_dir)
    start = time.time()
    if remaining <= 0:
        console.print(f"study {study.study_name} already has {done} complete trials "
                      f"(search.n_trials={cfg.search.n_trials}); nothing to run")
    else:
        if done:
            console.print(f"resuming study {study.study_name}: {done} complete, running "
                          f"{remaining} more")
        proxy.prepare(dataset, study, objective.shape, objective.images, console)
        if promoted is not None:
            console.print(f"proxy.promote.to={cfg.proxy.promote.to}: the front of the "
                          f"{cfg.proxy.kind} scores is promoted to the {promoted.kind} proxy "
                          f"while the search runs (at most {cfg.proxy.promote.share:.0%} of "
                          "the trials' time)", highlight=False)
            promoted.prepare(dataset, None, objective.shape, objective.images, console)
        try:
            run_trials(cfg, study, objective, done, remaining, threads)
        except (StorageInternalError, SQLAlchemyError) as exc:
            raise storage_error(cfg.storage.url, exc, during_run=True) from None
    if cfg.proxy.rescore:
        rescore_front(cfg, study, dataset, objective, console)
    rows = pareto_rows(study)
    note = energy_note(device_model)
    write_outputs(cfg, study, rows, out_dir, time.time() - start, note)
    print_table(cfg, study, rows, out_dir, console, note)


def rescore_front(cfg: Config, study: optuna.Study, dataset, objective: Objective,
                  console: Console) -> None:
    """``proxy.rescore=distill``: the front's members not yet re-scored with these settings
    scored by the distilled proxy (``proxy.score`` as the search's; its own calibration, not
    the study's), each recorded in the study as soon as it is scored."""
    from search.proxies import TrialInfo
    from search.study import RESCORED_ATTR, proxy_hash, rescored
    from spaces.arch import Arch

    dcfg = promoted_config(cfg, cfg.proxy.rescore)
    key = proxy_hash(dcfg)
    done = rescored(study)
    todo = [t for t in pareto_trials(study)
            if done.get(str(t.number), {}).get("proxy_hash") != key]
    if not todo:
        return
    console.print(f"proxy.rescore={cfg.proxy.rescore}: the front's {len(todo)} member(s) "
                  "scored again by the distilled proxy", highlight=False)
    proxy = make_proxy(dcfg)
    proxy.prepare(dataset, None, objective.shape, objective.images, console)
    for t in tqdm(todo, desc="re-scoring the front", unit="trial"):
        arch_id = t.user_attrs["arch_id"]
        same = [r for r in done.values() if r["arch_id"] == arch_id and r["proxy_hash"] == key]
        if same:  # the sampler proposed this architecture again: its score, not a new training
            done[str(t.number)] = dict(same[0], cost_s=0.0)
        else:
            out = proxy.score(Arch.from_json(t.user_attrs["arch_json"]),
                              TrialInfo({"naswot": t.user_attrs["zc_naswot"]}, {}))
            done[str(t.number)] = {"proxy": dcfg.proxy.kind, "proxy_hash": key,
                                   "score_name": proxy.score_name(), "score": out["score"],
                                   "accuracy": out["accuracy"],
                                   "cost_s": round(out["cost_s"], 2), "arch_id": arch_id}
        study.set_user_attr(RESCORED_ATTR, done)  # a killed run keeps what it scored


MAX_FAILURES = 5


def run_trials(cfg: Config, study: optuna.Study, objective: Objective, done: int,
               remaining: int, threads: ThreadChooser | None = None) -> None:
    """Run trials until the study has ``search.n_trials`` complete trials, counting every
    worker's (see :mod:`search.budget`).

    A candidate whose training fails (e.g. diverges) fails its trial and the search goes on;
    after ``MAX_FAILURES`` failures in one run it stops, since something is wrong. With
    ``search.minutes``, no trial starts after that many minutes of this run. ``threads``: the
    caller's :class:`spaces.threads.ThreadChooser` (its look at the load goes on from there),
    else a new one.
    """
    n_trials = cfg.search.n_trials
    minutes = cfg.search.minutes
    deadline = None if minutes is None else time.time() + 60 * minutes
    label = score_name(cfg)
    # the settings of the proxy that scores promotions (prepared by the caller)
    promote_key = None if objective.promoted is None else proxy_hash(objective.promoted.cfg)
    bar = tqdm(total=n_trials, initial=done, desc="trials", unit="trial")
    failures = []
    waiting_said = [False]
    tracker = FrontTracker(study.directions)

    def on_wait(complete: int, held: int) -> None:
        if not waiting_said[0]:
            bar.write(f"{held - complete} trial(s) of other workers hold the rest of the "
                      "budget; waiting for them (a worker that dies has its trial re-run here)")
            waiting_said[0] = True

    watch = TrialWatch(bar, threads or ThreadChooser(cfg.search.threads))
    if watch.threads.note():
        bar.write(watch.threads.note())

    def budgeted(trial: optuna.Trial) -> tuple[float, ...]:
        check_slot(trial, n_trials)
        watch.start(trial.number)
        return objective(trial)  # (the trial ends in `after`; an interrupt leaves it current)

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        watch.stop()
        if trial.state == TrialState.FAIL and SURPLUS_ATTR not in trial.system_attrs:
            failures.append(trial.number)
            if len(failures) >= MAX_FAILURES:
                study.stop()
                return
        trials = study.get_trials(deepcopy=False)
        bar.update(sum(t.state == TrialState.COMPLETE for t in trials) - bar.n)
        if promote_key is not None:
            p = cfg.proxy.promote
            chosen = next_promotion(trials, study.directions, promote_key, p.share, p.after)
            if chosen is not None:
                promote(study, chosen, promote_key)
        front = tracker.update(trials)
        if front:
            best = front[0]
            fastest = min(front, key=lambda t: t.user_attrs["latency_ms"])
            bar.set_postfix_str(
                f"top #{best.number} {label} {best.values[0]:.3f} @ "
                f"{best.user_attrs['latency_ms']:.3f} ms | fastest #{fastest.number} "
                f"{label} {fastest.values[0]:.3f} @ {fastest.user_attrs['latency_ms']:.3f} ms"
                f" | front {len(front)}")
        if not wait_for_slot(study, n_trials, on_wait=on_wait, trials=trials):
            study.stop()
        elif deadline is not None and time.time() >= deadline:
            bar.write(f"search.minutes={minutes:g} reached: no more trials in this run (the "
                      "same command continues the study)")
            study.stop()

    try:
        while wait_for_slot(study, n_trials, on_wait=on_wait):
            try:
                with on_terminate_interrupt():
                    study.optimize(budgeted, gc_after_trial=False, callbacks=[after],
                                   catch=(RuntimeError, ValueError, FloatingPointError))
                break
            except KeyboardInterrupt:
                raise interrupted_trial(study, watch.current) from None
            except UpdateFinishedTrialError:
                # Our result came after another worker had judged the trial stale (its
                # heartbeat was late, e.g. a storage outage longer than the grace period):
                # that worker queued a re-run, which keeps the budget exact.
                bar.write("warning: a trial of this worker was failed as stale by another "
                          "worker while it ran; its re-run is queued; going on")
    finally:
        watch.close()
        bar.update(len(complete_trials(study)) - bar.n)
        bar.close()
    if failures:
        print(f"warning: {len(failures)} trial(s) failed in this run ({failures}); their "
              "errors are in the study (optuna trial system attrs 'fail_reason')"
              + ("; stopped early" if len(failures) >= MAX_FAILURES else ""))


def write_outputs(cfg: Config, study: optuna.Study, rows: list[dict], out_dir: Path,
                  seconds: float, energy: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text(out_dir / "pareto.csv", buf.getvalue())
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                        TrialState.WAITING)}
    config = asdict(cfg)
    config["storage"]["url"] = redact(cfg.storage.url)
    write_text(out_dir / "config.json", json.dumps(config, indent=1))
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    skipped = [str(t.user_attrs.get("skipped", "")) for t in done]
    proxy = {"kind": cfg.proxy.kind,
             "seconds": round(sum(t.user_attrs.get("proxy_cost_s", 0.0) for t in done), 1),
             "stopped_early": sum("proxy_stopped_at" in t.user_attrs for t in done),
             "skipped_over_budget": sum(s.startswith("over budget") for s in skipped),
             "skipped_by_prefilter": sum(s.startswith("pre-filter") for s in skipped)}
    summary = {"study": study.study_name, "storage": redact(cfg.storage.url),
               "device": cfg.device.name, "objectives": cfg.search.objectives,
               "trials": counts, "proxy": proxy, "this_run_seconds": round(seconds, 1),
               "pareto": rows, "energy": energy}
    write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
