"""The study in its storage: created once with every grid point queued, claimed trial by trial,
kept alive by heartbeats, and a trial whose worker died put back in the queue.

- **Storage**: an Optuna `RDBStorage` (SQLite `DIR/study.db` by default, or any SQLAlchemy URL,
  e.g. `postgresql://user@host/db`), with a lock timeout so that several local writers on one
  SQLite file wait for each other instead of failing.
- **No grid point trained twice**: the process that *creates* the study (creation is atomic: the
  study name is unique in the storage) queues every grid point once as a WAITING trial, then
  records the spec; every other process waits for that record. Workers take WAITING trials with
  a compare-and-set on the trial's state (`claim`), so a trial is taken by one worker only.
  Optuna's grid sampler is not used: under concurrency it can hand out a point twice.
- **Kill-safe**: a worker records a heartbeat of its trial every `heartbeat` seconds; a RUNNING
  trial whose heartbeat is 3 beats old is failed by any worker (`optuna.storages.fail_stale_trials`)
  and `retry` queues it again with the same parameters and the same run directory, which the next
  worker resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..registry import UserError
from .spec import Spec

if TYPE_CHECKING:
    import optuna

READY_TIMEOUT = 120  # seconds a process waits for the study's creator to queue the grid


def storage_url(out: str | os.PathLike[str], storage: str | None) -> str:
    """The storage URL: `storage`, or the SQLite file `OUT/study.db`. A `postgresql://` URL without
    a driver means psycopg (3) to SQLAlchemy 2.1; where only psycopg2 (the sweep extra's) is
    installed, it is that."""
    if not storage:
        return f"sqlite:///{(Path(out) / 'study.db').resolve()}"
    if storage.startswith("postgresql://") and not find_spec("psycopg") and find_spec("psycopg2"):
        return "postgresql+psycopg2://" + storage.removeprefix("postgresql://")
    return storage


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's heartbeat is experimental: its warning says so on every use."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    import optuna
    import sqlalchemy.exc

    sqlite = url.startswith("sqlite")
    # isolation_level=None: Python's sqlite3 opens no transactions of its own (`serialize_sqlite`)
    engine_kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}} if sqlite else {}
    for attempt in range(6):
        try:
            with quiet():
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                                     grace_period=3 * heartbeat, heartbeat_stale_trial_callback=retry)
            if sqlite:
                serialize_sqlite(storage.engine)
            return storage
        except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as error:
            raise UserError(f"--storage {url}: {str(error).splitlines()[0]}") from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            # another process made the tables at the same moment ("already exists"): they exist now;
            # or the server cannot be reached: say so after a few tries
            if attempt == 5:
                raise UserError(f"--storage {url}: {str(error).splitlines()[0]}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def serialize_sqlite(engine: Any) -> None:
    """Make every transaction on the SQLite file `BEGIN IMMEDIATE`: it holds the write lock from its
    first statement. Python's sqlite3 otherwise runs a transaction's reads before its first write
    outside it, so two workers could both read a trial as WAITING and both set it RUNNING: a
    compare-and-set that is not one (measured: 4 processes claimed 58 times 40 trials)."""
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def encode(value: Any) -> Any:
    """A value as an Optuna parameter: a number, string or bool as it is, a table or list as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def distribution(spec: Spec, key: str) -> Any:
    """The Optuna distribution of a swept key."""
    import optuna.distributions as d

    space = spec.search.get(key, {"choices": spec.grid.get(key)})
    if "choices" in space:
        return d.CategoricalDistribution([encode(v) for v in space["choices"]])
    low, high, log, step = space["low"], space["high"], space.get("log", False), space.get("step")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return d.IntDistribution(low, high, log=log, step=step or 1)
    return d.FloatDistribution(low, high, log=log, step=step)


def decode(spec: Spec, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as config values (the tables back from their JSON)."""
    decoded = {}
    for key, value in params.items():
        space = spec.search.get(key, {"choices": spec.grid.get(key)})
        choices = {encode(v): v for v in space.get("choices") or []}
        decoded[key] = choices.get(value, value)
    return decoded


def sampler_and_pruner(spec: Spec) -> tuple[Any, Any]:
    import optuna

    sampler = optuna.samplers.RandomSampler() if spec.sampler == "random" else optuna.samplers.TPESampler()
    pruner = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
              "hyperband": optuna.pruners.HyperbandPruner}[spec.pruner]()
    return sampler, pruner


def open_study(spec: Spec, url: str) -> optuna.Study:
    """The study named `spec.name` in the storage at `url`, created (grid queued) if new."""
    import optuna

    storage = open_storage(url, spec.heartbeat)
    sampler, pruner = sampler_and_pruner(spec)
    try:
        direction = optuna.study.StudyDirection[spec.direction.upper()]
        study = optuna.create_study(storage=storage, study_name=spec.name, directions=[direction], sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
        wait_until_ready(study, spec, url)
        return study
    distributions = {key: distribution(spec, key) for key in spec.grid}
    for index, point in enumerate(spec.grid_points()):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                                  distributions={key: distributions[key] for key in point},
                                                  params={key: encode(v) for key, v in point.items()},
                                                  user_attrs={"grid_point": index}))
    study.set_user_attr("spec", spec.record())  # last: the mark that the grid is queued
    return study


def load_study(spec: Spec, url: str) -> optuna.Study:
    """The existing study (for a report); a one-line error if there is none."""
    import optuna

    storage = open_storage(url, spec.heartbeat)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        raise UserError(f"no study {spec.name!r} in {url}; run the sweep first") from None
    wait_until_ready(study, spec, url, timeout=0)
    return study


def wait_until_ready(study: optuna.Study, spec: Spec, url: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait until the study's creator has queued the grid; refuse a study made from another spec."""
    deadline = time.monotonic() + timeout
    while "spec" not in study.user_attrs:
        if time.monotonic() >= deadline:
            raise UserError(f"study {spec.name!r} in {url} has no spec recorded (its creator stopped while "
                            "queueing the grid?); delete the study or give [sweep] name another value")
        time.sleep(0.5)
    if study.user_attrs["spec"] != spec.record():
        raise UserError(f"study {spec.name!r} in {url} was made from a different spec; use another --out, "
                        "--storage or [sweep] name")


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take a WAITING trial (set it RUNNING if no other worker did first), or None if there is none."""
    import optuna
    import sqlalchemy.exc

    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        for attempt in range(10):
            try:
                taken = storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING)
                break
            except optuna.exceptions.UpdateFinishedTrialError:
                taken = False
                break
            except sqlalchemy.exc.OperationalError:  # SQLite: another writer held the lock; try again
                time.sleep(0.1 * (attempt + 1))
        else:
            taken = False
        if taken:
            return optuna.trial.Trial(study, trial_id)
    return None


def fail_stale(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose heartbeat stopped, and queue them again (`retry`)."""
    import optuna

    with quiet():
        optuna.storages.fail_stale_trials(study)


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a trial again whose worker stopped (a stale heartbeat, a signal): the same parameters
    and the same run directory (user attribute `run`), which the next worker resumes."""
    import optuna

    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={**trial.user_attrs, "retry_of": trial.number}))


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat now and every `interval` seconds while the block runs."""
    import sqlalchemy.exc

    storage: Any = study._storage  # an RDBStorage: it keeps heartbeats
    trial_id = trial._trial_id
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(sqlalchemy.exc.OperationalError):  # a busy database: the next beat
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
