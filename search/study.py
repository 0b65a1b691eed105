"""The Optuna study: storage, resume checks, running the remaining trials, the Pareto table.

The study's user attributes record what it was created with (space, dataset, device model
hash, objectives, proxy); resuming with anything else is refused, so a study never silently
mixes two setups. ``search.n_trials`` is the study's total of complete trials.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any, Optional

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import Config
from search.errors import UserError
from search.objective import DIRECTIONS
from search.pareto import fidelity_rank, trusted_front
from search.proxy_config import COMBINED_SCORE, PROXY_SCORES
from search.storage import storage_error

__all__ = ["complete_trials", "make_sampler", "open_study",
           "pareto_trials", "proxy_accuracy", "proxy_hash", "proxy_score_name",
           "RESCORED_ATTR", "rescored", "score_hint",
           "SCORE_MEANING", "SETUP_WAIT_S", "stable_hash", "STUDY_FORMAT", "study_meta",
           "worker_seed", "WorkerSeededSampler"]

# The study format: what a study records and how (its setup hashes). A study of another
# format is refused on resume with what to do (CHANGELOG.md says what each changed).
# 2: the proxy's settings hashed whole (format 1 left proxy.score=accuracy out).
STUDY_FORMAT = 2


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able object that does not depend on key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def proxy_hash(cfg: Config) -> str:
    """The proxy's settings as a hash; ``calibration_archs`` counts only for the score that
    uses it, the supernet's settings only for ``proxy=supernet``; ``rescore`` (what happens
    after the search) and ``promote`` (trials of another proxy, each recording its own) not
    at all."""
    settings = asdict(cfg.proxy)
    del settings["rescore"], settings["promote"]
    if settings["score"] != COMBINED_SCORE:
        del settings["calibration_archs"]
    if settings["kind"] != "supernet":
        del settings["supernet"]
    else:
        settings["supernet"] = {**cfg.proxy.supernet.recipe(), "file": cfg.proxy.supernet.file}
    return stable_hash(settings)


def score_hint(cfg: Config, recorded: dict) -> str:
    """Where a study's proxy settings differ from ``cfg``'s only by ``proxy.score`` (a study
    made under another default, say), the override that resumes it."""
    for score in PROXY_SCORES:
        if score != cfg.proxy.score and proxy_hash(
                replace(cfg, proxy=replace(cfg.proxy, score=score))) == recorded["proxy_hash"]:
            return (f"; it was scored with proxy.score={score}: add proxy.score={score} to "
                    "resume it")
    return ""


def study_meta(cfg: Config, data_fingerprint: str, device_model_hash: str) -> dict:
    """What a study is tied to; stored as study user attributes and checked on resume."""
    return {
        "edgenas_study_format": STUDY_FORMAT,
        "space": cfg.space.name, "space_hash": stable_hash(cfg.space.identity()),
        "data": cfg.data.name, "data_fingerprint": data_fingerprint,
        "device": cfg.device.name, "device_bits": list(cfg.device.bits),
        "device_model_hash": device_model_hash,
        "objectives": list(cfg.search.objectives),
        "proxy": cfg.proxy.kind, "proxy_hash": proxy_hash(cfg),
        "seed": cfg.seed,
        # what train_memory_kib prices, where the search optimizes or limits it
        **({"train_memory": f"update={cfg.finetune.update} batch={cfg.finetune.batch}"}
           if "train_memory_kib" in cfg.search.objectives
           or cfg.budget.train_memory_kib is not None else {}),
    }


def worker_seed(seed: int, first_trial: int) -> int:
    """The seed of a worker whose first trial is number ``first_trial`` of a study seeded
    ``seed``: ``seed`` itself for a fresh study, otherwise a hash of both.

    Not ``seed + first_trial``: with it, seed 1 resumed at trial 1 proposed exactly what seed
    2 proposes fresh, so repeated searches "with seeds 0, 1, 2" shared most of their trials.
    """
    if first_trial == 0:
        return seed
    return int(np.random.SeedSequence([seed, first_trial]).generate_state(1)[0])


class WorkerSeededSampler(optuna.samplers.BaseSampler):
    """A sampler seeded, when this worker starts its first trial, from ``seed`` and that
    trial's number (:func:`worker_seed`).

    A single worker is reproducible (a fresh study starts from ``seed``; a resumed one does
    not replay its first proposals), and workers sharing a study get different seeds, since
    Optuna numbers their first trials differently; with one seed each they would propose the
    same architectures.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._factory, self._seed = factory, seed
        self._inner: optuna.samplers.BaseSampler | None = None

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        if self._inner is None:
            self._inner = self._factory(self._seed)
        return self._inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._inner is None:
            self._inner = self._factory(worker_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict
                        ) -> dict:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    def factory(seed: int) -> optuna.samplers.BaseSampler:
        if cfg.search.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=cfg.search.population,
                                                 seed=seed)
        if cfg.search.sampler == "tpe":
            # constant liar: workers sharing a study do not propose the same region at once
            # (one worker proposes exactly what it would without it)
            with warnings.catch_warnings():  # multivariate and group are "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                                  constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    seed = cfg.seed if cfg.search.sampler_seed is None else cfg.search.sampler_seed
    return WorkerSeededSampler(factory, seed)


def open_study(cfg: Config, storage: optuna.storages.BaseStorage, meta: dict,
               *, joining: bool = False) -> optuna.Study:
    """Create the study, or load it after checking it was made with the same setup."""
    from sqlalchemy.exc import SQLAlchemyError

    name = cfg.study.name
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
        if name in existing:
            recorded = existing[name].user_attrs
            diff = [k for k in meta if k in recorded and recorded[k] != meta[k]]
            missing = [k for k in meta if k not in recorded]
            foreign = len(missing) == len(meta)
            if foreign and not joining and existing[name].n_trials == 0:
                # Most likely another worker created it a moment ago and is recording its
                # setup now: wait for that before judging it.
                return _join_new_study(cfg, storage, meta)
            if diff or foreign:
                what = "; ".join(f"{k}: study has {recorded.get(k)!r}, now {meta[k]!r}"
                                 for k in diff) or "it was not created by this tool"
                if "edgenas_study_format" in diff:  # its hashes mean something else
                    what = (f"it was written in study format {recorded['edgenas_study_format']} "
                            f"by an earlier edgenas; this version writes format {STUDY_FORMAT}, "
                            "whose setup hashes differ (CHANGELOG.md)")
                elif "proxy_hash" in diff:
                    what += score_hint(cfg, recorded)
                unforceable = {"objectives", "space_hash", "device_bits"} & set(diff)
                if not cfg.study.force or foreign or unforceable:
                    raise UserError(
                        f"study {name!r} was created with a different setup ({what}). Its "
                        "trials would not be comparable, so it was not resumed and nothing "
                        "was written. Start a new study with study.name=NEW_NAME, restore the "
                        "original settings, or pass study.force=true to resume it anyway (not "
                        "possible across a different space, bit-widths or objectives, whose "
                        "parameters Optuna cannot mix)")
                print(f"warning: resuming study {name!r} despite a changed setup ({what}), "
                      "as study.force=true asks; the change is recorded in the study")
            study_id = storage.get_study_id_from_name(name)
            if diff:  # forced: record what changed
                history = list(recorded.get("forced_resumes", []))
                history.append({k: meta[k] for k in diff})
                storage.set_study_user_attr(study_id, "forced_resumes", history)
            return optuna.load_study(study_name=name, storage=storage,
                                     sampler=make_sampler(cfg))
        try:
            study = optuna.create_study(
                study_name=name, storage=storage, sampler=make_sampler(cfg),
                directions=[DIRECTIONS[o] for o in cfg.search.objectives])
        except optuna.exceptions.DuplicatedStudyError:
            # Another worker created it at the same moment: wait for its setup, then join.
            return _join_new_study(cfg, storage, meta)
        for key, value in meta.items():
            study.set_user_attr(key, value)
        return study
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise storage_error(cfg.storage.url, exc) from None


SETUP_WAIT_S = 30.0  # how long a worker waits for a new study's creator to record its setup


def _join_new_study(cfg: Config, storage: optuna.storages.BaseStorage,
                    meta: dict) -> optuna.Study:
    """Open a study another worker has just created, once it has recorded its setup."""
    import time

    study_id = storage.get_study_id_from_name(cfg.study.name)
    start = time.monotonic()
    told = False
    while len(storage.get_study_user_attrs(study_id)) < len(meta):
        waited = time.monotonic() - start
        if waited > SETUP_WAIT_S:
            break  # a study that never got its setup: open_study's checks will refuse it
        if waited > 2 and not told:
            print(f"study {cfg.study.name!r} has no setup recorded yet; waiting up to "
                  f"{SETUP_WAIT_S:.0f} s for the worker that created it", flush=True)
            told = True
        time.sleep(0.1)
    return open_study(cfg, storage, meta, joining=True)


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def proxy_accuracy(trial: FrozenTrial) -> Optional[float]:
    """The trial's proxy validation accuracy; None where the proxy trained nothing
    (``proxy=zero_cost``, or a study of format 1, which recorded none)."""
    if trial.user_attrs.get("proxy") == "zero_cost":
        return None
    return trial.user_attrs.get("proxy_accuracy")


# What each score of the accuracy objective means, in a line (tables, model cards).
SCORE_MEANING = {
    "fidelity+naswot": "fidelity to the teacher plus NASWOT, each in standard deviations from "
                       "their mean over the space's calibration architectures: 0 = an average "
                       "architecture, higher is better, negative = below average",
    "fidelity": "exp(-KL divergence from the teacher's predictions) on the validation images: "
                "1 = the teacher's predictions exactly, higher is better",
    "accuracy": "the validation accuracy the proxy measured (0-1)",
    "naswot": "NASWOT, a zero-cost score of the untrained network (log-determinant of its "
              "activation patterns): higher ranks better; not an accuracy",
}


def proxy_score_name(trial: FrozenTrial) -> str:
    """What the trial's accuracy objective holds (``proxy.score``; ``accuracy`` for trials
    recorded before the score existed)."""
    return trial.user_attrs.get("proxy_score_name", "accuracy")


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials that no other such trial dominates (by
    :func:`search.pareto.trusted_values` where architectures were promoted to a more
    trusted proxy), the most trusted fidelity first (``proxy.promote``), then by accuracy (by
    the re-scored accuracy where ``proxy.rescore`` scored the front again: see
    :func:`rescored`): ``select=best`` exports the first."""
    front = trusted_front(complete_trials(study), study.directions)
    again = rescored(study)
    if front and all(str(t.number) in again for t in front):
        front.sort(key=lambda t: -again[str(t.number)]["score"])
    front.sort(key=lambda t: -fidelity_rank(t))  # stable: the order above within a rank
    return front


RESCORED_ATTR = "rescored"


def rescored(study: optuna.Study) -> dict[str, dict]:
    """The front's members scored again after the search (``proxy.rescore``), by trial
    number (a study attribute: a finished trial's own attributes cannot change)."""
    return dict(study.user_attrs.get(RESCORED_ATTR, {}))
