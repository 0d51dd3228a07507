"""A sweep's report, read from its study: `trials.csv`, `summary.csv` and figures in OUT.

- `trials.csv`: one row a trial: `number`, a column per swept key (its dotted key; a table as
  JSON), `state`, `objective`, `run` (the run directory), `seconds` (training time).
- `summary.csv` (when `train.seed` is swept): per point of the other keys, the mean and the
  standard deviation (n - 1) of the objective over the seeds of its COMPLETE trials, and `n`.
- `objective-<key>.png` for each swept key but the seed: the objective against the key (mean and
  standard deviation over seeds, or every trial of a search); for a search also `history.png`
  (the objective by trial, and the best so far) and `importances.png` (Optuna's fANOVA
  importances of the keys).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_write, write_text_atomically
from .spec import Spec
from .study import decode

if TYPE_CHECKING:
    import optuna

SEED = "train.seed"


def shown(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def trial_rows(study: optuna.Study, spec: Spec, sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        params = decode(spec, trial.params)
        run = trial.user_attrs.get("run")
        rows.append({"number": trial.number, **{key: shown(params.get(key)) for key in spec.keys},
                     "state": trial.state.name, "objective": trial.value,
                     "run": str(sweep_dir / run) if run else "", "seconds": trial.user_attrs.get("seconds")})
    return rows


def summary_rows(rows: list[dict[str, Any]], spec: Spec) -> list[dict[str, Any]]:
    """Mean and standard deviation of the objective over seeds, per point of the other keys."""
    others = [key for key in spec.keys if key != SEED]
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        values = groups.setdefault(tuple(row[key] for key in others), [])
        if row["state"] == "COMPLETE":
            values.append(row["objective"])
    return [{**dict(zip(others, point)), "mean": statistics.fmean(values) if values else None,
             "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}
            for point, values in groups.items()]


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())
    return path


def save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    return path


def plot_key(rows: list[dict[str, Any]], spec: Spec, key: str, path: Path) -> Path:
    """The objective against `key`: for a grid, per value the mean over the other keys' points
    (seeds among them) with their standard deviation as an error bar; every trial as a dot."""
    from matplotlib.figure import Figure

    done = [row for row in rows if row["state"] == "COMPLETE" and row[key] is not None]  # a point without the key: not here
    figure = Figure(figsize=(5, 3.5))
    axis = figure.add_subplot()
    values = list(dict.fromkeys(row[key] for row in done))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    where = {v: (v if numeric else i) for i, v in enumerate(values)}
    axis.plot([where[row[key]] for row in done], [row["objective"] for row in done], ".", alpha=0.4, color="gray")
    if spec.grid:
        points = sorted(where.items(), key=lambda item: item[1])
        groups = [[row["objective"] for row in done if row[key] == v] for v, _ in points]
        axis.errorbar([x for _, x in points], [statistics.fmean(g) for g in groups],
                      yerr=[statistics.stdev(g) if len(g) > 1 else 0.0 for g in groups], marker="o", capsize=4)
        others = [other for other in spec.grid if other != key and len(spec.grid[other]) > 1]
        axis.set_title(f"mean and standard deviation over {', '.join(others)}" if others else "", fontsize=8)
    if not numeric:
        axis.set_xticks(list(where.values()), [str(v) for v in where], rotation=20, fontsize=7)
    elif spec.grid:
        axis.set_xticks(values)
    elif spec.search.get(key, {}).get("log"):
        axis.set_xscale("log")
    axis.set_xlabel(key)
    axis.set_ylabel(spec.objective)
    return save(figure, path)


def plot_history(rows: list[dict[str, Any]], spec: Spec, path: Path) -> Path:
    from matplotlib.figure import Figure

    done = [row for row in rows if row["state"] == "COMPLETE"]
    figure = Figure(figsize=(5, 3.5))
    axis = figure.add_subplot()
    axis.plot([row["number"] for row in done], [row["objective"] for row in done], "o", label="trial")
    best = max if spec.direction == "maximize" else min
    running = [best(row["objective"] for row in done[: i + 1]) for i in range(len(done))]
    axis.step([row["number"] for row in done], running, where="post", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(spec.objective)
    axis.legend()
    return save(figure, path)


def plot_importances(study: optuna.Study, path: Path) -> Path | None:
    import optuna

    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two complete trials, or a key that never varied
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 0.5 + 0.4 * len(importances)))
    axis = figure.add_subplot()
    axis.barh(list(importances)[::-1], list(importances.values())[::-1])
    axis.set_xlabel("importance (fANOVA)")
    return save(figure, path)


def write_report(study: optuna.Study, spec: Spec, sweep_dir: Path) -> list[Path]:
    """Write trials.csv, summary.csv (seeds swept) and the figures into `sweep_dir`; returns the paths."""
    rows = trial_rows(study, spec, sweep_dir)
    written = [write_csv(rows, sweep_dir / "trials.csv")]
    if SEED in spec.grid:
        written.append(write_csv(summary_rows(rows, spec), sweep_dir / "summary.csv"))
    if not any(row["state"] == "COMPLETE" and row["objective"] is not None and math.isfinite(row["objective"])
               for row in rows):
        return written
    for key in spec.keys:
        if key != SEED:
            written.append(plot_key(rows, spec, key, sweep_dir / f"objective-{key}.png"))
    if spec.search:
        written.append(plot_history(rows, spec, sweep_dir / "history.png"))
        importances = plot_importances(study, sweep_dir / "importances.png")
        written += [importances] if importances else []
    return written
