"""Sweeps: grids and searches of runs over any config keys, on an Optuna study.

    pyro-vae sweep SPEC.toml --out DIR [--workers N] [--storage URL] [--report]

    import pyro_vae
    pyro_vae.sweep("spec.toml", "runs/beta", workers=2)

SPEC is an ordinary config plus a `[sweep]` table (`spec`); each trial is an ordinary run
directory `DIR/trials/<number>/`; the study (`study`: SQLite `DIR/study.db` unless `--storage`
names another, e.g. PostgreSQL shared by many machines) records each trial's parameters, state,
objective and run. Workers (`workers`) take trials until none is left; the same command again
continues the study, and a killed worker's trial is resumed from its checkpoint by another.
The report (`sweep_report`; module `report`) is written at the end. Needs `pip install "pyro-vae[sweep]"` (Optuna);
`import pyro_vae` does not import it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..registry import UserError
from .spec import Spec, load_spec

__all__ = ["sweep", "sweep_report", "sweep_rows", "Spec", "load_spec"]


def require_optuna() -> None:
    """A one-line error naming the extra when Optuna (or its storage driver) is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError('sweeps need Optuna: pip install "pyro-vae[sweep]"') from None


def sweep(spec: Spec | dict[str, Any] | str | os.PathLike[str], out: str | os.PathLike[str],
          workers: int | None = None, storage: str | None = None) -> Path:
    """Run the sweep `spec` (a TOML path, a table, or a `Spec`) into `out` with `workers` local
    workers (default: one per core on a CPU, one on a GPU) on the study in `storage` (default:
    SQLite `OUT/study.db`); write the report; return `out`. Every grid point is checked before
    anything trains. Call it under `if __name__ == "__main__":` in a script: where CUDA may be
    used, the workers are spawned processes that import the script's module (on a CPU, forked)."""
    from .report import write_report
    from .study import open_study, storage_url
    from .workers import plan, run_workers, work_left

    spec = load_spec(spec)
    require_optuna()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    workers, threads = plan(spec, workers)
    study = open_study(spec, url)  # here, not in a worker: a storage error is this process's one line
    print(f"sweep {spec.name!r}: {len(study.trials)} trials in {url}; {workers} worker(s)"
          + (f", {threads} thread(s) each" if threads else ""), flush=True)
    failed = run_workers(study, spec, out, url, workers, threads) if work_left(study, spec) else []
    left = work_left(study, spec)
    for code in failed:
        print(f"a worker ended with {'signal ' + str(-code) if code < 0 else 'status ' + str(code)}; "
              + ("trials are left: run the same command to continue" if left else "the others took up its trial"),
              file=sys.stderr)
    for path in write_report(study, spec, out):
        print(path)
    return out


def sweep_rows(spec: Spec | dict[str, Any] | str | os.PathLike[str], out: str | os.PathLike[str],
               storage: str | None = None) -> list[dict[str, Any]]:
    """The rows of `trials.csv` (a dict a trial: `number`, the swept keys, `state`, `objective`,
    `run`, `seconds`) read from the study: what an experiment's own tables start from."""
    from .report import trial_rows
    from .study import load_study, storage_url

    spec = load_spec(spec)
    require_optuna()
    return trial_rows(load_study(spec, storage_url(out, storage)), spec, Path(out))


def sweep_report(spec: Spec | dict[str, Any] | str | os.PathLike[str], out: str | os.PathLike[str],
           storage: str | None = None) -> list[Path]:
    """Write the report of the sweep `spec` in `out` (trials.csv, summary.csv, figures) from its
    study, without training; returns the paths written."""
    from .report import write_report
    from .study import load_study, storage_url

    spec = load_spec(spec)
    require_optuna()
    out = Path(out)
    return write_report(load_study(spec, storage_url(out, storage)), spec, out)
