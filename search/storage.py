"""Study storages for one or many workers: SQLite, PostgreSQL (or any SQLAlchemy URL), journal.

Every storage knows which worker runs each trial (host, boot, pid and the process's start
time, a trial system attribute ``edgenas:worker``: :mod:`search.workers`), so a trial whose
worker died on this machine is failed and re-run at once, however the worker died:

- RDB storages (SQLite, PostgreSQL) also keep Optuna's heartbeat, which catches workers that
  died on other machines: their trials go stale after ``2 x search.heartbeat_s``.
- Optuna's journal storage has no heartbeat; its stale trials are found by host and pid only,
  so a journal file is shared by processes on one machine (as Optuna recommends anyway).

Server storages (PostgreSQL, MySQL) retry every call with exponential backoff while the
server is unreachable (restarted, failed over), for up to ``storage.retry_s`` seconds.
A write whose first attempt landed but whose answer was lost is recognised on the retry.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna's loop checks
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from search.errors import UserError
from search.urls import redact
from search.workers import DeadWorkerCheck, WorkerRecords

__all__ = ["batched_writes", "MAX_RETRY", "open_storage", "ResilientRDBStorage", "storage_error",
           "StorageLostError", "WorkerJournalStorage"]

MAX_RETRY = 3  # a trial cut off this many times in a row is not run again


# ---------------------------------------------------------------------------------------------
# Retrying server storages


def _transient(exc: BaseException) -> bool:
    """A lost connection or an unreachable server (as opposed to a bad query or bad data)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (OperationalError, InterfaceError)):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(exc: BaseException) -> str:
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


class StorageLostError(UserError):
    """The storage stayed unreachable for longer than ``storage.retry_s``."""


# Calls that are retried: every read and write Optuna's loop and ours make.
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "_get_stale_trial_ids",
    # what Optuna's cache layer (_CachedStorage) calls on the storage it wraps
    "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
)


def _sqlite_wal(engine: Any) -> None:
    """Write-ahead logging: readers never block the writer, and a commit appends to the log
    instead of rewriting pages (a trial makes ~70 commits). ``synchronous=NORMAL`` keeps every
    commit through a crash of the process (kill -9); only a power loss can undo the last few.
    The database must be on a local disk (WAL needs shared memory), as SQLite advises anyway.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections made while creating the tables: reopened with the pragmas


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDB storage with worker records, and, for servers, retries with backoff."""

    def __init__(self, url: str, *, retry_s: float, **kwargs: Any) -> None:
        self._workers = WorkerRecords()
        interval = kwargs.get("heartbeat_interval") or 60
        self._dead_workers = DeadWorkerCheck(interval, 2 * interval)
        self._retry_s = retry_s if not url.startswith("sqlite") else 0.0
        self._local = threading.local()
        self._redacted = redact(url.replace("postgresql+psycopg://", "postgresql://"))
        super().__init__(url, **kwargs)
        if url.startswith("sqlite"):
            _sqlite_wal(self.engine)

    @contextlib.contextmanager
    def batched(self, trial_id: int) -> Iterator[None]:
        """Write the parameters and user attributes that trial ``trial_id`` sets in this block
        (in this thread) in one transaction when the block ends, instead of one transaction
        each: a trial sets ~40 parameters and ~10 attributes, so this is most of the storage's
        cost per trial. Optuna's trial keeps its own copy, so nothing reads them meanwhile."""
        if getattr(self._local, "batch", None) is not None:
            yield
            return
        self._local.batch = (trial_id, [])
        try:
            yield
        finally:
            ops = self._local.batch[1]
            self._local.batch = None
            if ops:
                self._retrying(lambda: self._write_batch(ops))

    def _write_batch(self, ops: list[tuple]) -> None:
        """One transaction of bulk inserts into Optuna's tables. The distributions were
        checked against the study's when they were cached; the study's space is pinned by its
        ``space_hash`` attribute."""
        import json

        from optuna.distributions import check_distribution_compatibility, distribution_to_json
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import delete, insert

        trial_id = ops[0][1][0]
        params, attrs = [], {}
        for kind, args in ops:
            if kind == "param":
                _, name, value, distribution, previous = args
                if previous is not None:
                    check_distribution_compatibility(previous, distribution)
                params.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                               "distribution_json": distribution_to_json(distribution)})
            else:
                attrs[args[1]] = json.dumps(args[2])  # the last value of a key wins
        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            if params:
                session.execute(insert(models.TrialParamModel), params)
            if attrs:
                user = models.TrialUserAttributeModel
                session.execute(delete(user).where(user.trial_id == trial_id,
                                                   user.key.in_(list(attrs))))
                session.execute(insert(user), [{"trial_id": trial_id, "key": k, "value_json": v}
                                               for k, v in attrs.items()])

    def _batch_for(self, trial_id: int) -> list | None:
        batch = getattr(self._local, "batch", None)
        return batch[1] if batch is not None and batch[0] == trial_id else None

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
        args = (trial_id, param_name, param_value_internal, distribution, previous_distribution)
        ops = self._batch_for(trial_id)
        if ops is not None:
            ops.append(("param", args))
        else:
            self._retrying(lambda: RDBStorage._set_trial_param(self, *args))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        ops = self._batch_for(trial_id)
        if ops is not None:
            ops.append(("user_attr", (trial_id, key, value)))
        else:
            self._retrying(lambda: RDBStorage.set_trial_user_attr(self, trial_id, key, value))

    def record_heartbeat(self, trial_id: int) -> None:
        # Runs in Optuna's heartbeat thread: a failure must not kill the thread noisily.
        try:
            self._retrying(lambda: RDBStorage.record_heartbeat(self, trial_id))
            self._workers.record(self, trial_id)
        except StorageLostError as exc:
            print(f"warning: heartbeat of trial id {trial_id} not recorded: {exc}",
                  file=sys.stderr)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = set(self._retrying(lambda: RDBStorage._get_stale_trial_ids(self, study_id)))
        stale.update(self._dead_workers(lambda: self.get_all_trials(
            study_id, deepcopy=False, states=(TrialState.RUNNING,))))
        return sorted(stale)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        attempts = [0]

        def call() -> bool:
            attempts[0] += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if attempts[0] > 1:  # the first attempt landed; its answer was lost
                    stored = RDBStorage.get_trial(self, trial_id)
                    if stored.state == state:
                        return True
                raise

        return self._retrying(call)

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """Run ``call``, retrying transient errors with backoff for up to ``retry_s``."""
        if self._retry_s <= 0 or getattr(self._local, "inside", False):
            return call()
        self._local.inside = True
        try:
            start, delay, warned = time.monotonic(), 0.25, False
            while True:
                try:
                    result = call()
                    if warned:
                        print(f"storage reachable again after {time.monotonic() - start:.0f} s",
                              file=sys.stderr)
                    return result
                except Exception as exc:
                    if not _transient(exc):
                        raise
                    waited = time.monotonic() - start
                    if waited >= self._retry_s:
                        raise StorageLostError(
                            f"lost the study storage {self._redacted} for {waited:.0f} s "
                            f"({redact(_first_line(exc))}). This worker stopped; its "
                            "running trial is failed by the heartbeat and re-run by another "
                            "worker, or when you run the same command again. Finished trials "
                            "are kept. To wait longer for the server, raise storage.retry_s"
                        ) from None
                    if not warned:
                        print(f"warning: study storage unreachable "
                              f"({redact(_first_line(exc))}); retrying for up to "
                              f"{self._retry_s:.0f} s", file=sys.stderr)
                        warned = True
                    self.engine.dispose()  # drop pooled connections to the old server
                    time.sleep(min(delay, max(0.0, self._retry_s - waited)))
                    delay = min(delay * 2, 15.0)
        finally:
            self._local.inside = False


def _retried(name: str) -> Callable:
    base = getattr(RDBStorage, name)

    @functools.wraps(base)
    def method(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: base(self, *args, **kwargs))

    return method


for _name in _RETRIED:
    if _name not in vars(ResilientRDBStorage) and hasattr(RDBStorage, _name):
        setattr(ResilientRDBStorage, _name, _retried(_name))


# ---------------------------------------------------------------------------------------------
# Journal storage with stale-trial recovery by host and pid


class WorkerJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage, plus recovery of trials whose worker process died.

    It plugs into Optuna's heartbeat interface: the "heartbeat" records the worker once per
    trial, and a trial is stale when its worker's process is gone from this machine.
    """

    def __init__(self, path: Path, heartbeat_s: int) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self._workers = WorkerRecords()
        self._interval = heartbeat_s
        self._dead_workers = DeadWorkerCheck(heartbeat_s, 2 * heartbeat_s)
        self._callback = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def record_heartbeat(self, trial_id: int) -> None:
        self._workers.record(self, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._dead_workers(lambda: self.get_all_trials(
            study_id, deepcopy=False, states=(TrialState.RUNNING,)))

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable:
        return self._callback


# ---------------------------------------------------------------------------------------------


def open_storage(url: str, heartbeat_s: int, retry_s: float = 600) -> optuna.storages.BaseStorage:
    """The study storage for ``storage.url``.

    ``sqlite:///PATH``, ``postgresql://USER@HOST[:PORT]/DB`` (or any SQLAlchemy URL Optuna
    accepts) and ``journal:PATH`` (Optuna's journal file).
    """
    from sqlalchemy.exc import SQLAlchemyError

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if path.is_dir():
            raise UserError(f"storage.url={url}: {path} is a folder; give a file path, e.g. "
                            "journal:studies/edgenas.journal")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return WorkerJournalStorage(path, heartbeat_s)
        except (ValueError, OSError) as exc:
            raise storage_error(url, exc) from None
    engine_kwargs: dict[str, Any] = {}
    engine_url = url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):]).expanduser()
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise UserError(f"{path} is not a SQLite database (corrupt, or another "
                                    "kind of file); it was left untouched. Move it away or "
                                    "choose another file with storage.url=sqlite:///PATH")
        path.parent.mkdir(parents=True, exist_ok=True)
        if "timeout=" not in url:  # wait up to 30 s for a lock held by another process
            engine_kwargs["connect_args"] = {"timeout": 30}
    elif url.startswith("postgresql"):
        if url.startswith("postgresql://"):  # psycopg 3, whatever SQLAlchemy's default driver
            engine_url = "postgresql+psycopg://" + url[len("postgresql://"):]
        # Give up on an unreachable host after 10 s per attempt rather than hanging. No
        # pool_pre_ping (a round trip per transaction): a connection the server dropped fails
        # its first statement, and the retry drops the pool and reconnects.
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    try:
        for attempt in range(5):
            try:
                return ResilientRDBStorage(
                    engine_url, retry_s=retry_s, engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY))
            except SQLAlchemyError as exc:
                # Workers started together on an empty database all create Optuna's tables;
                # the losers of that race see "already exists" / a duplicate key, and find
                # the tables made when they try again.
                text = str(exc)
                if attempt == 4 or not ("already exists" in text or "duplicate key" in text):
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except ImportError as exc:
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        if isinstance(missing, ModuleNotFoundError):
            raise UserError(f"storage.url={redact(url)} needs the Python module "
                            f"{missing.name!r}, which is not installed: pip install "
                            f"{_driver_hint(url)}") from None
        raise storage_error(url, exc) from None
    except (SQLAlchemyError, ValueError) as exc:
        raise storage_error(url, exc) from None


def _driver_hint(url: str) -> str:
    if url.startswith("postgresql"):
        return "'psycopg[binary]' (it comes with edgenas; reinstall the project)"
    if url.startswith("mysql"):
        return "pymysql, and use a mysql+pymysql:// URL"
    return "the database driver SQLAlchemy names for this URL"


def storage_error(url: str, exc: Exception, during_run: bool = False) -> UserError:
    """A one-paragraph message for a storage that cannot be opened, read or written."""
    first = redact(_first_line(exc))
    if "locked" in first:
        advice = ("another process holds a lock on it: wait for that process or use another "
                  "storage.url")
    elif "password" in first or "authentication" in first:
        advice = ("give the password in the PGPASSWORD environment variable or ~/.pgpass, not "
                  "in the URL, and check the user name")
    elif url.startswith(("postgresql", "mysql")):
        advice = ("check storage.url, that the database server is running and reachable, "
                  "and that the database exists (createdb NAME)")
    else:
        advice = "check storage.url"
    outcome = ("Finished trials are kept; run the same command again to resume" if during_run
               else "It was not modified")
    return UserError(f"cannot use the study storage {redact(url)}: {first}; {advice}. "
                     f"{outcome}")


def batched_writes(trial: optuna.Trial) -> contextlib.AbstractContextManager:
    """A block whose parameter and user-attribute writes for ``trial`` go to the storage in
    one transaction (RDB storages; elsewhere each write goes at once)."""
    storage = trial.study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna's cache layer wraps RDB storages
    if isinstance(backend, ResilientRDBStorage):
        return backend.batched(trial._trial_id)
    return contextlib.nullcontext()
