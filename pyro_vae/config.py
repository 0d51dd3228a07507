"""The run configuration: a TOML file with sections [data], [model], [objective], [train].

Every key is checked against ``SCHEMA``: an unknown key, a wrong type, an
out-of-range value or an unknown registry name raises a one-line
:class:`~pyro_vae.registry.UserError` naming the key and what is allowed.
Values given as ``--set section.key=value`` are read as TOML values (bare words
are taken as strings), and may reach into tables: ``--set model.encoder.hidden=[64]``.

``build_model(config, data_shape)`` turns a checked config into a :class:`VAE`.
"""

import copy
import math

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import tomli_w

from .annealing import build_schedule
from .data import BINARIZATIONS, DATASETS, load_data
from .likelihoods import LIKELIHOODS
from .model import VAE
from .nets import DECODERS, ENCODERS
from .objectives import ESTIMATORS
from .priors import PRIORS
from .registry import UserError


# ---- checks: each takes (value, key) and returns the value or raises UserError ----

def _type_name(value):
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(value), type(value).__name__
    )


def integer(minimum=None):
    def check(value, key):
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{key} must be an integer, got {_type_name(value)} {value!r}")
        if minimum is not None and value < minimum:
            raise UserError(f"{key} must be >= {minimum}, got {value}")
        return value

    return check


def number(minimum=None, exclusive=False):
    def check(value, key):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {_type_name(value)} {value!r}")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise UserError(f"{key} must be {'>' if exclusive else '>='} {minimum}, got {value}")
        return float(value)

    return check


def boolean(value, key):
    if not isinstance(value, bool):
        raise UserError(f"{key} must be true or false, got {_type_name(value)} {value!r}")
    return value


def string(value, key):
    if not isinstance(value, str):
        raise UserError(f"{key} must be a string, got {_type_name(value)} {value!r}")
    return value


def choice(*allowed):
    def check(value, key):
        if value not in allowed:
            raise UserError(f"{key}: unknown value {value!r}; choose one of: {', '.join(map(str, allowed))}")
        return value

    return check


def device(value, key):
    string(value, key)
    if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
        raise UserError(f"{key}: unknown device {value!r}; choose one of: auto, cpu, cuda, cuda:N")
    return value


def spec(registry):
    """A registry name, or a table with the name and that class's options."""

    def check(value, key):
        registry.split_spec(value, key)
        return value

    return check


def kl_weight(value, key):
    """A number >= 0 (a constant weight) or a schedule table, checked by building it."""
    if isinstance(value, dict):
        build_schedule(value, steps_per_epoch=1, where=key)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(
            f"{key} must be a number >= 0 or a schedule table, e.g. "
            f'{{ schedule = "linear", start = 0.0, end = 1.0, epochs = 10 }}; got {_type_name(value)} {value!r}'
        )
    return number(minimum=0)(value, key)


def name_in(registry):
    def check(value, key):
        string(value, key)
        registry.get(value, key)
        return value

    return check


SCHEMA = {
    "data": {
        "name": ("digits", name_in(DATASETS)),
        "path": ("", string),
        "binarize": ("dynamic", choice(*BINARIZATIONS)),
        "download": (False, boolean),
        "on_device": (False, boolean),
    },
    "model": {
        "latent_dim": (16, integer(minimum=1)),
        "encoder": ({"type": "mlp", "hidden": [256, 256], "activation": "elu"}, spec(ENCODERS)),
        "decoder": ({"type": "mlp", "hidden": [256, 256], "activation": "elu"}, spec(DECODERS)),
        "likelihood": ("bernoulli", spec(LIKELIHOODS)),
        "prior": ("normal", spec(PRIORS)),
    },
    "objective": {
        # a name, or a table with the estimator's own options: { name = "renyi", alpha = 0.5 }
        "estimator": ("trace", spec(ESTIMATORS)),
        "num_particles": (1, integer(minimum=1)),
        "vectorize_particles": (False, boolean),
        "jit": (False, boolean),
        "kl_weight": (1.0, kl_weight),
        "reduction": ("sum", choice("sum", "mean")),
    },
    "train": {
        "epochs": (50, integer(minimum=1)),
        "batch_size": (64, integer(minimum=1)),
        "eval_batch_size": (1000, integer(minimum=1)),
        "lr": (1e-3, number(minimum=0, exclusive=True)),
        "optimizer": ("adam", choice("adam", "adamw", "sgd", "rmsprop")),
        "seed": (0, integer(minimum=0)),
        "device": ("auto", device),
        "progress": (True, boolean),
        "lr_schedule": ("constant", choice("constant", "cosine")),
        "clip_grad_norm": (0.0, number(minimum=0)),
        "max_skipped_steps": (0, integer(minimum=0)),
        "checkpoint_every": (0, integer(minimum=0)),
        "train_eval_examples": (10000, integer(minimum=1)),
        "precision": ("float32", choice("float32", "bf16")),
        "validate": (False, boolean),
    },
}


def default_config():
    return {section: {key: copy.deepcopy(default) for key, (default, _) in keys.items()} for section, keys in SCHEMA.items()}


def check_config(config):
    """Check every section and key; return a complete config with defaults filled in."""
    if not isinstance(config, dict):
        raise UserError(f"a config must be a table, got {_type_name(config)}")
    unknown = sorted(set(config) - set(SCHEMA))
    if unknown:
        raise UserError(f"unknown config section [{unknown[0]}]; sections are: {', '.join(SCHEMA)}")
    checked = default_config()
    for section, values in config.items():
        if not isinstance(values, dict):
            raise UserError(f"[{section}] must be a table, got {_type_name(values)}")
        allowed = dict(SCHEMA[section])
        if section == "data":  # a dataset's own options sit beside the common keys
            name = name_in(DATASETS)(values.get("name", checked["data"]["name"]), "data.name")
            allowed.update({option: (None, lambda v, k: v) for option in DATASETS.options(name)})
        for key, value in values.items():
            if key not in allowed:
                raise UserError(f"unknown key {section}.{key}; allowed in [{section}]: {', '.join(allowed)}")
            checked[section][key] = allowed[key][1](value, f"{section}.{key}")
    return checked


def parse_override(text):
    """``"section.key=value"`` -> (["section", "key"], value), the value read as TOML."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise UserError(f"--set {text!r}: the key must be section.key, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    return keys, value


def apply_overrides(config, overrides):
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        table = config
        for depth, key in enumerate(keys[:-1]):
            if isinstance(table.get(key), str) and depth >= 1:
                table[key] = {"type" if key in ("encoder", "decoder") else "name": table[key]}
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise UserError(f"--set {text!r}: {'.'.join(keys[: depth + 1])} is not a table")
        table[keys[-1]] = value
    return config


def load_config(path=None, overrides=()):
    """Read a TOML config (or start from the defaults), apply ``--set`` overrides, check it."""
    config = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                config = tomllib.load(f)
        except FileNotFoundError:
            raise UserError(f"no such config file: {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{path} is not valid TOML: {error}") from None
    merged = default_config()
    for section, values in config.items():
        if isinstance(values, dict) and section in merged:
            merged[section].update(values)
        else:
            merged[section] = values
    return check_config(apply_overrides(merged, overrides))


def save_config(config, path):
    with open(path, "wb") as f:
        tomli_w.dump(config, f)


def build_data(config):
    """The dataset a checked config describes (``data.on_device`` is the trainer's to apply)."""
    return load_data(**{k: v for k, v in config["data"].items() if k != "on_device"})


def build_model(config, data_shape):
    """The VAE a checked config describes, for data of shape ``data_shape``."""
    model = config["model"]
    return VAE(
        data_shape,
        latent_dim=model["latent_dim"],
        encoder=model["encoder"],
        decoder=model["decoder"],
        likelihood=model["likelihood"],
        prior=model["prior"],
    )


def build_estimator(config, data_shape=None):
    """The estimator a checked config describes; ``data_shape`` sizes a neural baseline."""
    objective = config["objective"]
    return ESTIMATORS.build(
        objective["estimator"],
        "objective.estimator",
        num_particles=objective["num_particles"],
        vectorize_particles=objective["vectorize_particles"],
        jit=objective["jit"],
        data_shape=data_shape,
    )
