"""What the experiment scripts share: where they write, how a grid of runs is run (a sweep), and
one convention for the spread over seeds.

- A full run writes its tables and figures to the tracked `experiments/results/<name>/`, its runs to
  the ignored `runs/<name>/`; `--quick` writes everything under `runs/<name>/quick/`, so a clean
  checkout stays clean.
- A grid of runs is a sweep (`pyro_vae.sweep`): resumable (the same command continues; nothing
  finished is trained again), with workers sharing the machine's cores.
- Over seeds: the mean and the sample standard deviation (n - 1), `<column>_mean`, `<column>_sd`, `n`.
"""

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def arguments(doc, **extra):
    """The shared command line: --quick, --workers, --report, and `extra` (name -> add_argument kwargs)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version in seconds to minutes, under runs/")
    parser.add_argument("--workers", type=int, default=None, help="local sweep workers (default: one per core)")
    parser.add_argument("--report", action="store_true", help="only the tables and figures from the runs so far")
    for name, options in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **options)
    return parser.parse_args()


def places(name, quick):
    """(results, runs): where experiment `name` writes its tables and its run directories."""
    runs = ROOT / "runs" / name / ("quick" if quick else "full")
    results = runs if quick else ROOT / "experiments" / "results" / name
    results.mkdir(parents=True, exist_ok=True)
    return results, runs


def read_spec(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def run_sweep(spec, out, workers=None, report_only=False):
    """Run (or, with `report_only`, only read) the sweep `spec` in `out`; its trials' rows, each with
    its run's evaluation record flattened in (`evaluation.json`, when the sweep evaluates; its
    `seconds` as `evaluation_seconds`, the row's `seconds` being the training's)."""
    from pyro_vae import sweep
    from pyro_vae.sweeps import sweep_rows

    if not report_only:
        sweep(spec, out, workers=workers)
    rows = []
    for row in sweep_rows(spec, out):
        record = Path(row["run"]) / "evaluation.json"
        if record.is_file():
            evaluation = flatten(json.loads(record.read_text()))
            evaluation["evaluation_seconds"] = evaluation.pop("seconds")  # the row's `seconds`: training's
            row.update(evaluation)
        rows.append(row)
    return rows


def completed_trials(name, args, quick_spec, prepare=None, place=None):
    """(results directory, spec, the COMPLETE trials' rows) of experiment `name`: its sweep
    `experiments/<name>.toml`, `prepare` applied (e.g. a data path, another data set), then
    `quick_spec` under --quick; run, or only read with --report, under `place` (default `name`)."""
    results, runs = places(place or name, args.quick)
    spec = read_spec(ROOT / "experiments" / f"{name}.toml")
    spec = prepare(spec) if prepare else spec
    spec = quick_spec(spec) if args.quick else spec
    trials = run_sweep(spec, runs, workers=args.workers, report_only=args.report)
    return results, spec, [trial for trial in trials if trial["state"] == "COMPLETE"]


def flatten(record, prefix=""):
    """A nested record as one level of numbers: {"dci": {"completeness": 1}} -> {"dci_completeness": 1}."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def component(value):
    """A swept component (`model.guide`, `objective.estimator`, ...) as a table: the sweep's rows
    hold a name as it is and a table as JSON."""
    table = json.loads(value) if value.startswith("{") else value
    return table if isinstance(table, dict) else {"name": table}


def summarize(rows, by, columns):
    """Mean and standard deviation (n - 1) of `columns` over the rows of each value of the keys `by`."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    summary = []
    for point, members in groups.items():
        out = dict(zip(by, point), n=len(members))
        for column in columns:
            values = [float(m[column]) for m in members if m.get(column) is not None]
            out[f"{column}_mean"] = statistics.fmean(values) if values else math.nan
            out[f"{column}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
        summary.append(out)
    return summary


def cell(row, column, digits):
    """`mean +- sd` of a summary row (the mean alone for one seed)."""
    mean, sd = row[f"{column}_mean"], row[f"{column}_sd"]
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} +- {sd:.{digits}f}"


def markdown_table(rows, columns, path):
    """Rows as a Markdown table; `columns`: (header, function of a row -> text)."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(text(row)) for _, text in columns) + " |" for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def write_csv(rows, path):
    """Write dict rows as CSV, floats to 4 decimals (the write-ups' tables are read from these)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    print(f"wrote {path}")
