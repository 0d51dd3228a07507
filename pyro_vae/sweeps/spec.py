"""A sweep's spec: an ordinary config plus a `[sweep]` table, read and checked before any training.

    [model]
    latent_dim = 8
    [sweep]
    grid = { "model.latent_dim" = [4, 8], "train.seed" = [0, 1, 2] }
    objective = "val_elbo"          # a metrics.csv column at the best epoch, or an evaluation key
    direction = "maximize"

A grid may also be a list of such tables (as scikit-learn's `ParameterGrid` takes): their points
one after another, each point setting only its own table's keys (the others keep the base
config's values). That is how runs that differ in *which* keys they set share one study:

    grid = [{ "objective.kl_weight" = [1, 4], "train.seed" = [0, 1] },
            { "objective.estimator" = [{ name = "tcvae", beta = 4 }], "train.seed" = [0, 1] }]

or a search: `search = { "train.lr" = { low = 1e-4, high = 1e-2, log = true } }` with
`trials = N` and `sampler = "tpe"` (or `"random"`); a key may also take `choices = [...]`.
Keys are the dotted keys `--set` takes; a value may be a component's name or an inline table.
Every grid point (and each end of a search range, each choice) is checked with the library's
config check (`config.check_config`) here, so a mistake is one line before anything trains.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import checks
from ..config import config_from_table, merged_with_defaults, read_toml, set_key
from ..registry import UserError

SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("maximize", "minimize")
SWEEP_KEYS = ("grid", "search", "trials", "sampler", "objective", "direction", "pruner", "evaluate", "name",
              "heartbeat")
EVALUATE_KEYS = ("samples", "split", "limit", "checkpoint")
# metrics.csv's columns (`epoch_metrics.metrics_row`); the per-dimension and per-layer ones by pattern
METRICS_COLUMNS = ("epoch", "step", "kl_weight", "effective_kl_weight", "lr", "capacity", "train_loss", "train_elbo",
                   "train_reconstruction", "train_kl", "val_elbo", "val_reconstruction", "val_kl", "active_units",
                   "seconds", "val_accuracy")
METRICS_PATTERN = re.compile(r"kl_\d+|val_kl_.+|active_units_.+")


@dataclass
class Spec:
    """A checked spec. `config`: the config table without `[sweep]` (unchecked, as written);
    `grids`: the grid's tables (one, or a list's), dotted key -> values; `grid`: every grid key to
    all its values (their union over the tables); `search`: dotted key -> range; the rest as in
    the module's docstring."""

    config: dict[str, Any]
    grids: list[dict[str, list[Any]]] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: int = 0
    sampler: str = "tpe"
    objective: str = "val_elbo"
    direction: str = "maximize"
    pruner: str = "none"
    evaluate: dict[str, Any] | None = None
    name: str = "sweep"
    heartbeat: int = 10

    @property
    def keys(self) -> list[str]:
        """The swept keys, in the spec's order."""
        return list(self.grid or self.search)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid ({dotted key: value}): each table's points in turn, its last key
        varying fastest; none for a search."""
        return [dict(zip(table, values)) for table in self.grids for values in itertools.product(*table.values())]

    def trial_config(self, params: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
        """The checked config of the trial with `params`; `threads` sets `train.threads` unless
        the spec sets it itself."""
        config = merged_with_defaults(self.config)
        for key, value in params.items():
            set_key(config, key.split("."), value, f"sweep key {key!r}")
        if threads is not None and not self.sets_threads():
            config["train"]["threads"] = threads
        return config_from_table(config)

    def sets_threads(self) -> bool:
        return "threads" in self.config.get("train", {}) or "train.threads" in self.keys

    def record(self) -> str:
        """The spec as canonical JSON: a study remembers the spec it was made from."""
        grid = self.grids[0] if len(self.grids) == 1 else self.grids  # a single table recorded as written
        return json.dumps({"config": self.config, "grid": grid, "search": self.search, "trials": self.trials,
                           "objective": self.objective, "direction": self.direction, "evaluate": self.evaluate},
                          sort_keys=True)


def load_spec(spec: Spec | dict[str, Any] | str | os.PathLike[str]) -> Spec:
    """Read (a TOML path or a table) and check a spec; every grid point is checked as a config."""
    if isinstance(spec, Spec):
        return spec
    name = "sweep"
    if not isinstance(spec, dict):
        name, spec = Path(spec).stem, read_toml(spec)
    table = {section: values for section, values in spec.items() if section != "sweep"}
    sweep = spec.get("sweep")
    if not isinstance(sweep, dict):
        raise UserError("a sweep spec needs a [sweep] table with grid = {...} or search = {...}")
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise UserError(f"unknown key sweep.{unknown[0]}; allowed in [sweep]: {', '.join(SWEEP_KEYS)}")
    if ("grid" in sweep) == ("search" in sweep):
        raise UserError("[sweep] needs exactly one of grid = {...} and search = {...}")
    config_from_table(table)  # the base config itself
    result = Spec(config=table, name=checks.string(sweep.get("name", name), "sweep.name"),
                  objective=checks.string(sweep.get("objective", "val_elbo"), "sweep.objective"),
                  direction=checks.choice(sweep.get("direction", "maximize"), "sweep.direction", DIRECTIONS),
                  pruner=checks.choice(sweep.get("pruner", "none"), "sweep.pruner", PRUNERS),
                  sampler=checks.choice(sweep.get("sampler", "tpe"), "sweep.sampler", SAMPLERS),
                  heartbeat=checks.integer(sweep.get("heartbeat", 10), "sweep.heartbeat", minimum=1),
                  evaluate=check_evaluate(sweep.get("evaluate")))
    if "grid" in sweep:
        result.grids = check_grid(sweep["grid"])
        result.grid = union(result.grids)
        if "trials" in sweep:
            raise UserError("sweep.trials is for a search; a grid trains each of its points once")
        points = result.grid_points()
    else:
        result.search = check_search(sweep["search"])
        result.trials = checks.integer(sweep.get("trials", 20), "sweep.trials", minimum=1)
        points = search_corners(result.search)
    if result.evaluate is None:
        check_metrics_column(result.objective)
    for point in points:
        try:
            result.trial_config(point)
        except UserError as error:
            raise UserError(f"sweep point {json.dumps(point)}: {error}") from None
    return result


def check_dotted(key: str) -> str:
    if len(key.split(".")) < 2 or not all(key.split(".")):
        raise UserError(f"sweep key {key!r}: must be section.key, e.g. train.lr")
    return key


def check_grid(grid: Any) -> list[dict[str, list[Any]]]:
    """The grid's tables: a table, or a non-empty list of tables, of dotted keys to non-empty lists."""
    tables = grid if isinstance(grid, list) and grid else [grid]
    for index, table in enumerate(tables):
        where = "sweep.grid" if len(tables) == 1 else f"sweep.grid[{index}]"
        if not isinstance(table, dict) or not table:
            raise UserError(f"{where} must be a non-empty table of dotted keys to lists of values "
                            "(or sweep.grid a list of such tables)")
        for key, values in table.items():
            check_dotted(key)
            if not isinstance(values, list) or not values:
                raise UserError(f"{where} {key!r}: expected a non-empty list of values, got {values!r}")
    return [dict(table) for table in tables]


def union(tables: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Every key of the tables to all its values, each once, in the order first met."""
    values: dict[str, list[Any]] = {}
    for table in tables:
        for key, choices in table.items():
            known = values.setdefault(key, [])
            known += [v for v in choices if v not in known]
    return values


def check_search(search: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(search, dict) or not search:
        raise UserError("sweep.search must be a non-empty table of dotted keys to ranges")
    for key, space in search.items():
        check_dotted(key)
        where = f"sweep.search {key!r}"
        if not isinstance(space, dict):
            raise UserError(f"{where}: expected {{ low = ..., high = ... }} or {{ choices = [...] }}, got {space!r}")
        if "choices" in space:
            if set(space) != {"choices"} or not isinstance(space["choices"], list) or not space["choices"]:
                raise UserError(f"{where}: choices must be a non-empty list, alone")
            continue
        unknown = sorted(set(space) - {"low", "high", "log", "step"})
        if unknown or "low" not in space or "high" not in space:
            raise UserError(f"{where}: expected low, high and optionally log, step; got {', '.join(space)}")
        low, high = checks.number(space["low"], f"{where}.low"), checks.number(space["high"], f"{where}.high")
        if not low < high:
            raise UserError(f"{where}: low ({low}) must be below high ({high})")
        log = checks.boolean(space.get("log", False), f"{where}.log")
        if log and low <= 0:
            raise UserError(f"{where}: a log range needs low > 0, got {low}")
        if "step" in space and (log or checks.number(space["step"], f"{where}.step", minimum=0, exclusive=True) > high - low):
            raise UserError(f"{where}: step must be positive, at most high - low, and without log")
    return dict(search)


def search_corners(search: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of a search the check tries: each key at each end of its range (or each choice),
    the others at their first."""
    first = {key: space["choices"][0] if "choices" in space else space["low"] for key, space in search.items()}
    points = [first]
    for key, space in search.items():
        for value in space["choices"] if "choices" in space else (space["low"], space["high"]):
            points.append({**first, key: value})
    return points


def check_evaluate(evaluate: Any) -> dict[str, Any] | None:
    if evaluate is None:
        return None
    if not isinstance(evaluate, dict) or "samples" not in evaluate:
        raise UserError("sweep.evaluate must be a table with samples = K (and optionally split, limit, checkpoint)")
    unknown = sorted(set(evaluate) - set(EVALUATE_KEYS))
    if unknown:
        raise UserError(f"unknown key sweep.evaluate.{unknown[0]}; allowed: {', '.join(EVALUATE_KEYS)}")
    checks.integer(evaluate["samples"], "sweep.evaluate.samples", minimum=1)
    checks.choice(evaluate.get("split", "test"), "sweep.evaluate.split", ("test", "valid"))
    checks.choice(evaluate.get("checkpoint", "best.pt"), "sweep.evaluate.checkpoint", ("best.pt", "checkpoint.pt"))
    return dict(evaluate)


def check_metrics_column(objective: str) -> None:
    if objective not in METRICS_COLUMNS and not METRICS_PATTERN.fullmatch(objective):
        raise UserError(f"sweep.objective {objective!r} is not a metrics.csv column ({', '.join(METRICS_COLUMNS)}, "
                        f"kl_<d>, ...); for an evaluation key set sweep.evaluate = {{ samples = K }}")
