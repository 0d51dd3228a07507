"""One trial: an ordinary run directory `OUT/trials/<number>/` trained (or resumed) from the
trial's config, its objective read, and its state told to the study.

The validation ELBO of every epoch is reported to the study (the pruner's input, and the
dashboard's learning curves); when the pruner says stop, the run stops cleanly at the start of
the next epoch, its checkpoint that of the last finished epoch, and the trial is PRUNED. A run
stopped by SIGINT or SIGTERM (a checkpoint written) goes back in the queue and its worker stops.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import stopping
from ..loggers import Logger, read_metrics
from ..registry import UserError
from .spec import Spec
from .study import decode, distribution, heartbeat, retry

if TYPE_CHECKING:
    import optuna


class PruningReporter(Logger):
    """A logger that reports each epoch's validation ELBO to the trial (negated when the study
    minimizes, so that the pruner compares in the study's direction) and stops the run at the
    next step once the pruner says so: the epoch's checkpoint is written by then."""

    def __init__(self, out: Path, config: dict[str, Any], trial: optuna.Trial, sign: float):
        super().__init__(out, config)
        self.trial, self.sign, self.pruned = trial, sign, False
        self.reported: set[int] = set()

    def epoch(self, rows: list[dict[str, float]]) -> None:
        for row in rows:  # a resumed run reports its earlier epochs too (the retried trial has none)
            epoch = int(row["epoch"])
            if epoch not in self.reported:
                self.trial.report(self.sign * row["val_elbo"], epoch)
                self.reported.add(epoch)
        self.pruned = self.trial.should_prune()

    def step(self, step: int, loss: Any) -> None:
        if self.pruned:
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {max(self.reported)}")


def trial_params(trial: optuna.Trial, spec: Spec) -> dict[str, Any]:
    """The trial's values of the swept keys: a queued grid point's own (only its table's keys, when
    the grid is a list of tables), or drawn by the sampler."""
    if spec.grid:
        return decode(spec, dict(trial.params))
    params = {}
    for key in spec.keys:
        dist = distribution(spec, key)
        if hasattr(dist, "choices"):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif type(dist).__name__ == "IntDistribution":
            params[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return decode(spec, params)


def run_trial(study: optuna.Study, trial: optuna.Trial, spec: Spec, out: Path, threads: int | None) -> None:
    """Train the trial's run (resuming it where a checkpoint exists) and tell the study its outcome."""
    import optuna

    from ..training import TrainingStopped

    run_name = trial.user_attrs.get("run", f"trials/{trial.number}")
    trial.set_user_attr("run", run_name)
    run = out / run_name
    config = spec.trial_config(trial_params(trial, spec), threads)
    reporter = PruningReporter(run, config, trial, 1.0 if spec.direction == "maximize" else -1.0)
    print(f"trial {trial.number}: {run}", flush=True)
    with heartbeat(study, trial, spec.heartbeat):
        try:
            train_run(config, run, reporter)
            if reporter.pruned:
                raise optuna.TrialPruned()
            value = objective(spec, run)
        except optuna.TrialPruned:
            record_seconds(trial, run)
            tell(study, trial, state=optuna.trial.TrialState.PRUNED)
            return
        except TrainingStopped:
            if tell(study, trial, state=optuna.trial.TrialState.FAIL):
                retry(study, study.trials[trial.number])
            raise
        except UserError as error:  # a run that diverged, an objective the run lacks: this trial fails
            trial.set_user_attr("error", str(error))
            tell(study, trial, state=optuna.trial.TrialState.FAIL)
            print(f"trial {trial.number} failed: {error}", flush=True)
            return
    record_seconds(trial, run)
    tell(study, trial, value)


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
         state: optuna.trial.TrialState | None = None) -> bool:
    """Tell the study the trial's outcome; False if another worker failed the trial first (its
    heartbeat came too late: a stalled machine) and queued it again."""
    import optuna

    try:
        study.tell(trial, value, state=state)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as error:
        if isinstance(error, ValueError) and not str(error).startswith("Cannot tell a"):
            raise
        print(f"trial {trial.number} was failed by another worker (a late heartbeat) and queued again", flush=True)
        return False
    outcome = "COMPLETE" if state is None else state.name
    shown = "" if value is None else f", objective {value:.6g}"
    print(f"trial {trial.number} {outcome}{shown}: {progress(study)}", flush=True)
    return True


def progress(study: optuna.Study) -> str:
    """How far the study is: its trials finished (complete, pruned, failed for good), running, waiting."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    finished = sum(t.state in (states.COMPLETE, states.PRUNED) or (t.state == states.FAIL and t.number not in retried)
                   for t in trials)
    running = sum(t.state == states.RUNNING for t in trials)
    waiting = sum(t.state == states.WAITING for t in trials)
    return f"{finished} finished, {running} running, {waiting} waiting"


def train_run(config: dict[str, Any], run: Path, reporter: PruningReporter) -> None:
    """Train the run, or resume it from its checkpoint (a retried trial, or a rerun sweep)."""
    from ..training import train

    if (run / "checkpoint.pt").is_file():
        train(config, resume=run, callbacks=[reporter])
    else:  # new, or stopped before its first checkpoint: start again
        train(config, out=run, force=run.exists(), callbacks=[reporter])


def record_seconds(trial: optuna.Trial, run: Path) -> None:
    """The run's training seconds (all attempts together: metrics.csv's last row)."""
    if (run / "metrics.csv").is_file():
        rows = read_metrics(run / "metrics.csv")
        if rows:
            trial.set_user_attr("seconds", rows[-1]["seconds"])


def objective(spec: Spec, run: Path) -> float:
    """The trial's objective: a metrics.csv column at the best epoch (highest validation ELBO), or
    a key of the run's evaluation record (`sweep.evaluate`), written to RUN/evaluation.json."""
    if spec.evaluate is None:
        rows = read_metrics(run / "metrics.csv")
        row = rows[stopping.best_epoch([r["val_elbo"] for r in rows])[0]]
        if spec.objective not in row:
            raise UserError(f"sweep.objective {spec.objective!r} is not a column of {run / 'metrics.csv'}")
        return row[spec.objective]
    from ..report import evaluate_run

    options = spec.evaluate
    record = evaluate_run(run, num_samples=options["samples"], split=options.get("split", "test"),
                          limit=options.get("limit"), checkpoint=options.get("checkpoint", "best.pt"))
    value = lookup(record, spec.objective)
    if value is None:
        raise UserError(f"sweep.objective {spec.objective!r} is not a number of {run / 'evaluation.json'}")
    return value


def lookup(record: dict[str, Any], key: str) -> float | None:
    """`key` of an evaluation record: a dotted path (`dci.disentanglement`), at the top or under
    `disentanglement` (`mig`)."""
    for table in (record, record.get("disentanglement") or {}):
        value: Any = table
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
    return None
