"""The Optuna study: storage, resume checks, running the remaining trials, the Pareto table.

The study's user attributes record what it was created with (space, dataset, device model
hash, objectives, proxy); resuming with anything else is refused, so a study never silently
mixes two setups. ``search.n_trials`` is the study's total of complete trials.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import Config
from search.errors import UserError
from search.objective import DIRECTIONS

STUDY_FORMAT = 1


def redact(url: str) -> str:
    """The storage URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_meta(cfg: Config, data_fingerprint: str, device_model_hash: str) -> dict:
    """What a study is tied to; stored as study user attributes and checked on resume."""
    return {
        "edgenas_study_format": STUDY_FORMAT,
        "space": cfg.space.name, "space_hash": _hash(asdict(cfg.space)),
        "data": cfg.data.name, "data_fingerprint": data_fingerprint,
        "device": cfg.device.name, "device_bits": list(cfg.device.bits),
        "device_model_hash": device_model_hash,
        "objectives": list(cfg.search.objectives),
        "proxy": cfg.proxy.kind, "proxy_hash": _hash(asdict(cfg.proxy)),
        "seed": cfg.seed,
    }


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.BaseStorage:
    """An Optuna storage; RDB storages get a heartbeat and re-run stale trials."""
    from sqlalchemy.exc import SQLAlchemyError

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):]).expanduser()
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise UserError(f"{path} is not a SQLite database (corrupt, or another "
                                    "kind of file); it was left untouched. Move it away or "
                                    "choose another file with storage.url=sqlite:///PATH")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(
            url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            # Wait up to 30 s for a lock held by another process (unless the URL says ?timeout=)
            engine_kwargs={"connect_args": {"timeout": 30}}
            if url.startswith("sqlite") and "timeout=" not in url else {})
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise storage_error(url, exc) from None


def storage_error(url: str, exc: Exception) -> UserError:
    """A one-paragraph message for a storage that cannot be opened or read."""
    first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    if "locked" in first:
        advice = ("another process holds a lock on it: wait for that process or use another "
                  "storage.url")
    else:
        advice = "check storage.url (and that the database server is running)"
    return UserError(f"cannot use the study storage {redact(url)}: {first}; {advice}. It was "
                     "not modified")


def make_sampler(cfg: Config, n_existing: int) -> optuna.samplers.BaseSampler:
    seed = cfg.seed + n_existing  # a resumed study does not replay the same proposals
    if cfg.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.search.population, seed=seed)
    if cfg.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(cfg: Config, storage: optuna.storages.BaseStorage, meta: dict) -> optuna.Study:
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
            if diff or foreign:
                what = "; ".join(f"{k}: study has {recorded.get(k)!r}, now {meta[k]!r}"
                                 for k in diff) or "it was not created by this tool"
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
            n = len(storage.get_all_trials(study_id, deepcopy=False))
            return optuna.load_study(study_name=name, storage=storage,
                                     sampler=make_sampler(cfg, n))
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=make_sampler(cfg, 0),
            directions=[DIRECTIONS[o] for o in cfg.search.objectives])
        for key, value in meta.items():
            study.set_user_attr(key, value)
        return study
    except SQLAlchemyError as exc:
        raise storage_error(cfg.storage.url, exc) from None


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def feasible(trial: FrozenTrial) -> bool:
    constraints = trial.system_attrs.get("constraints")
    if constraints is None:
        constraints = [v for k, v in trial.system_attrs.items() if k.startswith("constraints:")]
    return all(v <= 0 for v in constraints) and "skipped" not in trial.user_attrs


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials that no other such trial dominates, by accuracy."""
    trials = [t for t in complete_trials(study) if feasible(t)]
    signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        ge = all(s * x >= s * y for s, x, y in zip(signs, a.values, b.values))
        return ge and any(s * x > s * y for s, x, y in zip(signs, a.values, b.values))

    front = [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
    return sorted(front, key=lambda t: -t.values[0])
