"""Workers: processes that take trials from the study until none is left.

`--workers N` starts N local processes on one study, each training with `train.threads` =
cores // N on a CPU (two one-thread runs on two cores do nearly twice the work of one two-thread
run), unless the spec sets `train.threads` itself. On a CPU with one thread a trial they are forked,
so that they start with torch, Pyro and the library imported; otherwise spawned (a forked child can
use neither CUDA nor, once this process has, several OpenMP threads: `can_fork`). Any number of
such commands on any machines, given the same `--storage`, share the study the same way.

A worker loops: fail the trials whose worker died (`study.fail_stale`), take a WAITING trial
(`study.claim`), or, in a search with trials left to draw, ask the sampler for a new one; with
nothing to take it waits while other trials run (one may yet go stale and come back), then stops.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..devices import cores
from ..registry import UserError
from .spec import Spec
from .study import claim, fail_stale, open_study
from .trials import run_trial

if TYPE_CHECKING:
    import optuna


def on_cpu(spec: Spec) -> bool:
    device = spec.config.get("train", {}).get("device", "auto")
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return str(device) == "cpu"


def trial_threads(spec: Spec, threads: int | None) -> int | None:
    """The torch threads a trial trains on (`Spec.trial_config`): the spec's `train.threads`, else
    `threads`, the worker's share; None where the grid or search varies it, or it is not a count
    ("auto", or 0 for torch's default)."""
    if "train.threads" in spec.keys:
        return None
    count = spec.config.get("train", {}).get("threads", threads)
    return count if isinstance(count, int) and count > 0 else None


def can_fork(spec: Spec, threads: int | None) -> bool:
    """Whether the workers may be forked: on a CPU (a forked child cannot use CUDA), where the system
    forks, and with one torch thread a trial. GNU OpenMP does not survive a fork: once this process
    has run a multi-threaded torch operation, a forked child that starts a team of threads waits
    forever for threads it does not have, and one thread never starts a team."""
    return on_cpu(spec) and trial_threads(spec, threads) == 1 and "fork" in multiprocessing.get_all_start_methods()


def plan(spec: Spec, workers: int | None) -> tuple[int, int | None]:
    """(workers, threads per worker): by default one worker per core on a CPU (one on a GPU)."""
    cpu = on_cpu(spec)
    if workers is None:
        workers = cores() if cpu else 1
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    return workers, max(1, cores() // workers) if cpu else None


def draws_left(study: optuna.Study, spec: Spec) -> int:
    """Trials a search may still draw: `trials` less those drawn, a trial failed and queued again
    counting once (its retry does)."""
    import optuna

    drawn = [t for t in study.get_trials(deepcopy=False)
             if t.state != optuna.trial.TrialState.FAIL or "error" in t.user_attrs]
    return spec.trials - len(drawn)


def work_left(study: optuna.Study, spec: Spec) -> bool:
    """Whether the study has trials waiting or running, or a search has draws left."""
    import optuna

    states = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    return bool(study.get_trials(deepcopy=False, states=states)) or bool(spec.search and draws_left(study, spec) > 0)


def work(spec: Spec, out: Path, url: str, threads: int | None) -> None:
    """One worker: trials until the study has none left for it."""
    import optuna

    study = open_study(spec, url)
    while True:
        fail_stale(study)
        trial = claim(study)
        if trial is None and spec.search and draws_left(study, spec) > 0:
            with warnings.catch_warnings():  # our workers keep the heartbeat themselves (`study.heartbeat`)
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                trial = study.ask()
        if trial is not None:
            run_trial(study, trial, spec, out, threads)
        elif study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            time.sleep(1.0)  # another worker's trial may yet go stale and come back (or end: then stop soon)
        else:
            return


def worker_main(spec: Spec, out: Path, url: str, threads: int | None) -> None:
    """A worker process: user errors as one line, exit status 2 (130 when interrupted)."""
    import torch

    from ..training import TrainingStopped

    count = trial_threads(spec, threads)
    if count is not None:  # a trial's count for all its work, the evaluation after training too (a forked worker: 1)
        torch.set_num_threads(count)
    try:
        work(spec, out, url, threads)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(study: optuna.Study, spec: Spec, out: Path, url: str, workers: int, threads: int | None) -> list[int]:
    """Run `workers` workers (in this process when one); returns the exit codes of the processes
    that did not end well (a negative code: killed by that signal; the others took its trial)."""
    if workers == 1:
        work(spec, out, url, threads)
        return []
    fork = can_fork(spec, threads)
    if fork:  # a forked worker must not inherit this process's database connections (it opens its own)
        storage: Any = getattr(study._storage, "_backend", study._storage)  # Optuna caches an RDBStorage
        storage.engine.dispose()
    context: Any = multiprocessing.get_context("fork" if fork else "spawn")
    processes = [context.Process(target=worker_main, args=(spec, out, url, threads), name=f"sweep-worker-{i}")
                 for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return [p.exitcode for p in processes if p.exitcode]
