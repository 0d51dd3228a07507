"""The checks of the config's values (`config.SCHEMA`): each is called as `check(value, key)`
and returns the value, or raises a one-line `UserError` naming `key` and what is allowed.
They build on `checks` (one validator per kind of value) and read the registries, so a new
registered name is allowed without touching them.
"""

import functools

from . import checks
from .annealing import build_schedule
from .checks import integer, number, string, type_name
from .loggers import LOGGERS
from .models import MODEL_KINDS
from .penalties import capacity_schedule
from .registry import UserError


def at_least(check, minimum, exclusive=False):
    """`check` (`checks.integer` or `checks.number`) with a lower bound."""
    if exclusive:
        return functools.partial(check, minimum=minimum, exclusive=True)
    return functools.partial(check, minimum=minimum)


def one_of(*allowed):
    return functools.partial(checks.choice, allowed=allowed)


def model_kind(value, key):
    """A registered model kind, read from `MODEL_KINDS` when the config is checked (a kind
    registered after import is one too)."""
    return checks.choice(value, key, allowed=tuple(MODEL_KINDS))


def auto_or_boolean(value, key):
    if value != "auto" and not isinstance(value, bool):
        raise UserError(f"{key} must be \"auto\", true or false, got {type_name(value)} {value!r}")
    return value


def threads(value, key):
    if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise UserError(f"{key} must be \"auto\" or an integer >= 0, got {type_name(value)} {value!r}")
    return value


def early_stopping(value, key):
    """false, or a table { patience = N, min_delta = 0.0 }."""
    if value is False:
        return value
    if not isinstance(value, dict):
        raise UserError(f"{key} must be false or a table such as {{ patience = 10 }}, got {type_name(value)} {value!r}")
    unknown = sorted(set(value) - {"patience", "min_delta"})
    if unknown:
        raise UserError(f"{key}.{unknown[0]}: unknown option; allowed: patience, min_delta")
    if "patience" not in value:
        raise UserError(f"{key} needs patience = N (epochs without a better validation ELBO)")
    integer(value["patience"], f"{key}.patience", minimum=1)
    number(value.get("min_delta", 0.0), f"{key}.min_delta", minimum=0)
    return value


def loggers(value, key):
    if not isinstance(value, list):
        raise UserError(f"{key} must be a list such as [\"csv\", \"tensorboard\"], got {type_name(value)} {value!r}")
    for name in value:
        LOGGERS.get(string(name, key), key)
    return value


def device(value, key):
    checks.string(value, key)
    if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
        raise UserError(f"{key}: unknown device {value!r}; choose one of: auto, cpu, cuda, cuda:N")
    return value


def spec(registry, empty=False):
    """A registry name, or a table with the name and that class's options; with `empty`, also
    `""`: none named yet, for `check_config` to fill in."""

    def check(value, key):
        if not (empty and value == ""):
            registry.split_spec(value, key)
        return value

    # read by the generated config reference (docs/hooks.py); mypy does not model attributes set on a function
    check.registry = registry  # type: ignore[attr-defined]
    return check


def kl_weight(value, key):
    """A number >= 0 (a constant weight) or a schedule table, checked by building it."""
    if isinstance(value, dict):
        build_schedule(value, steps_per_epoch=1, where=key)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(
            f"{key} must be a number >= 0 or a schedule table, e.g. "
            f'{{ name = "linear", start = 0.0, end = 1.0, epochs = 10 }}; got {type_name(value)} {value!r}'
        )
    return number(value, key, minimum=0)


def capacity(value, key):
    """false (off) or a capacity table (gamma and C(t)'s schedule), checked by building it."""
    if value is False:
        return value
    capacity_schedule(value, steps_per_epoch=1, where=key)
    return value


def labeled(value, key):
    """"all", or how many training labels to keep (an integer >= 1)."""
    if value == "all":
        return value
    if isinstance(value, str):
        raise UserError(f"{key} must be \"all\" or an integer >= 1, got {value!r}")
    return integer(value, key, minimum=1)


def subset(value, key):
    """{ train = N, valid = N, test = N } (any of them): how many examples of each split to keep."""
    if not isinstance(value, dict):
        raise UserError(f"{key} must be a table like {{ train = 20000, valid = 2000 }}, got {value!r}")
    for split, size in value.items():
        if split not in ("train", "valid", "test"):
            raise UserError(f"{key}.{split}: not a split; the splits are train, valid, test")
        integer(size, f"{key}.{split}", minimum=1)
    return value


def name_in(registry):
    def check(value, key):
        registry.get(string(value, key), key)
        return value

    # read by the generated config reference (docs/hooks.py); mypy does not model attributes set on a function
    check.registry = registry  # type: ignore[attr-defined]
    return check
