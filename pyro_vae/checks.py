"""The checks of user-supplied values: one function per kind of check.

Each takes `(value, key, ...)`, where `key` names the value for the user
(`"train.epochs"`, `"objective.kl_weight.start"`), and returns the value (converted
where that is the point: `number` returns a float) or raises a one-line
`UserError`. Config schemas, schedules, networks, priors,
likelihoods and evaluation all use these, so a message reads the same wherever it comes from.
"""

import math

from .registry import UserError


def type_name(value):
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(value), type(value).__name__
    )


def integer(value, key, minimum=None):
    """An int (not a bool), at least `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{key} must be an integer, got {type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{key} must be >= {minimum}, got {value}")
    return value


# Seeds are 0..2^32 - 1: what numpy's RandomState takes, and far enough below torch's 2^64 that
# the seeds derived from them (seed * 100003 + epoch) stay in range.
SEED_LIMIT = 2**32


def seed(value, key):
    """A seed: an integer in 0..2^32 - 1."""
    integer(value, key, minimum=0)
    if value >= SEED_LIMIT:
        raise UserError(f"{key} must be a seed in 0..{SEED_LIMIT - 1}, got {value}")
    return value


def number(value, key, minimum=None, exclusive=False):
    """A finite int or float (not a bool), returned as a float; at least (or above) `minimum`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {type_name(value)} {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise UserError(f"{key} must be {'>' if exclusive else '>='} {minimum}, got {value}")
    return float(value)


def boolean(value, key):
    if not isinstance(value, bool):
        raise UserError(f"{key} must be true or false, got {type_name(value)} {value!r}")
    return value


def string(value, key):
    if not isinstance(value, str):
        raise UserError(f"{key} must be a string, got {type_name(value)} {value!r}")
    return value


def choice(value, key, allowed):
    if value not in allowed:
        raise UserError(f"{key}: unknown value {value!r}; choose one of: {', '.join(map(str, allowed))}")
    return value


def sizes(value, key):
    """A list of integers >= 1 (hidden layer widths, channel counts; may be empty), as a list."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise UserError(f"{key} must be a list of integers >= 1, got {value!r}")
    value = list(value)
    for size in value:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UserError(f"{key} must be a list of integers >= 1, got {value!r}")
    return value


def latent_dims(value, key):
    """A latent size: an integer >= 1, or a list of two (`[z1, z2]`, two stochastic layers)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise UserError(f"{key} must be an integer or a list of two integers [z1, z2], got {value!r}")
        return [integer(size, key, minimum=1) for size in value]
    return integer(value, key, minimum=1)
