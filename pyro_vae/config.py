"""The run configuration: a TOML file with sections [data], [model], [objective], [train].

Every key is checked against `SCHEMA`: an unknown key, a wrong type, an
out-of-range value or an unknown registry name raises a one-line
`UserError` naming the key and what is allowed.
Values given as `--set section.key=value` are read as TOML values (bare words
are taken as strings), and may reach into tables: `--set model.encoder.hidden=[64]`.

`build` turns a checked config into the objects of a run.
"""

import copy
from typing import cast

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]  # the same API
import tomli_w

from . import checks
from .atomic import atomic_write
from .checks import boolean, integer, number, string, type_name
from .config_values import (
    at_least,
    auto_or_boolean,
    capacity,
    device,
    early_stopping,
    kl_weight,
    labeled,
    loggers,
    model_kind,
    name_in,
    one_of,
    spec,
    subset,
    threads,
)
from .data import BINARIZATIONS, DATASETS
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .models import CLASSIFIERS, COMPONENTS, LINK_HIDDEN, MODEL_KINDS, VAE
from .nets import DECODERS, ENCODERS
from .objectives import ESTIMATORS
from .optimizers import LR_SCHEDULES, OPTIMIZERS
from .penalties import check_free_bits
from .priors import PRIORS
from .registry import UserError

SCHEMA = {
    "data": {
        "name": ("digits", name_in(DATASETS)),
        "path": ("", string),
        "binarize": ("auto", one_of(*BINARIZATIONS)),
        "dequantize": (False, boolean),  # (k + u) / L for a continuous likelihood (Theis et al. 2016)
        "download": (False, boolean),
        "on_device": (False, boolean),
        "labeled": ("all", labeled),  # or N: keep N training labels (balanced across classes), hide the rest
        "labeled_seed": (0, checks.seed),  # which N labels are kept
        "subset": ({}, subset),  # { train = N, valid = N, test = N }: seeded random subsets of the splits
        "subset_seed": (0, checks.seed),
    },
    "model": {
        "kind": ("vae", model_kind),
        "latent_dim": (16, checks.latent_dims),  # an integer, or [z1, z2] for two stochastic layers
        "encoder": ({"name": "mlp", "hidden": [256, 256], "activation": "elu"}, spec(ENCODERS)),
        "decoder": ({"name": "mlp", "hidden": [256, 256], "activation": "elu"}, spec(DECODERS)),
        "likelihood": ("bernoulli", spec(LIKELIHOODS)),
        "prior": ("normal", spec(PRIORS)),
        "guide": ("normal", spec(GUIDES)),
        "link_hidden": (LINK_HIDDEN, checks.sizes),  # two layers: hidden widths of the z2 -> z1 links ([]: linear)
        "num_classes": (10, at_least(integer, 2)),  # cvae, m2: labels 0..num_classes-1
        "classifier": ({"name": "mlp", "hidden": [256, 256], "activation": "elu"}, spec(CLASSIFIERS)),  # m2: q(y | x)
        # m2: "" (M2 on the data), or a trained VAE run whose frozen codes M2 models (M1+M2)
        "features": ("", string),
        "components": (COMPONENTS, at_least(integer, 2)),  # gmvae: K, the values of the discrete latent y
        "component_prior": ("uniform", one_of("uniform", "learned")),  # gmvae: p(y) = 1/K or learned pi
    },
    "objective": {
        # a name, or a table with the estimator's own options: { name = "renyi", alpha = 0.5 };
        # empty until checked, where the model kind's default fills it (check_config)
        "estimator": ("", spec(ESTIMATORS, empty=True)),
        "num_particles": (1, at_least(integer, 1)),
        "vectorize_particles": (False, boolean),
        "jit": (False, boolean),
        "kl_weight": (1.0, kl_weight),
        "capacity": (False, capacity),  # { start, end, epochs, gamma }: -gamma |KL - C(t)| (penalties)
        "free_bits": (0.0, check_free_bits),  # lambda nats per latent dimension; 0: off
        "reduction": ("sum", one_of("sum", "mean")),
        "classification_weight": (100.0, at_least(number, 0)),  # m2: alpha = this * N (Kingma et al.: 0.1; see docs)
        "kl_weight_labels": (False, boolean),  # m2: whether kl_weight also scales the label's KL term
    },
    "train": {
        "epochs": (50, at_least(integer, 1)),
        "max_time": (0.0, at_least(number, 0)),  # seconds of training; 0: no limit
        "batch_size": (64, at_least(integer, 1)),
        # m2: labeled pairs per step beside batch_size unlabeled points; 0: ceil(N_l / steps), each set once an epoch
        "labeled_batch_size": (0, at_least(integer, 0)),
        "eval_batch_size": (1000, at_least(integer, 1)),
        "lr": (1e-3, at_least(number, 0, exclusive=True)),
        "optimizer": ("adam", name_in(OPTIMIZERS)),
        "seed": (0, checks.seed),
        "device": ("auto", device),
        "threads": ("auto", threads),  # torch's intra-op threads; "auto": as many as the load leaves free; 0: torch's default
        "progress": (True, boolean),
        "lr_schedule": ("constant", spec(LR_SCHEDULES)),
        "lr_warmup_steps": (0, at_least(integer, 0)),
        "early_stopping": (False, early_stopping),
        "loggers": (["csv"], loggers),
        "log_every": (50, at_least(integer, 1)),
        "clip_grad_norm": (0.0, at_least(number, 0)),
        "max_skipped_steps": (0, at_least(integer, 0)),
        "checkpoint_every": (0, at_least(integer, 0)),
        "train_eval_examples": (10000, at_least(integer, 1)),
        "precision": ("float32", one_of("float32", "bf16")),
        "cuda_graph": ("auto", auto_or_boolean),
        "validate": (False, boolean),
    },
}


# One line per key: what it sets. The documentation's config reference is generated from
# SCHEMA (defaults), these lines and the registries (names, options), so it cannot drift;
# tests/test_config.py checks that every key of SCHEMA has exactly one line here.
DESCRIPTIONS = {
    "data": {
        "name": "The data set: a registered name (see the datasets below); its own options sit beside the common keys.",
        "path": "Where the files are, for data sets that need them (a directory, or a file for `npz`).",
        "binarize": "`auto` (dynamic for a Bernoulli likelihood on non-binary data, else none), `none`, "
        "`static` (drawn once, seeded) or `dynamic` (training images redrawn every epoch).",
        "download": "`mnist`, `fashion-mnist`, `binarized-mnist`: fetch missing files into `path`.",
        "on_device": "Keep the whole data set on the training device and batch by index.",
        "labeled": "`\"all\"`, or N: keep N training labels (balanced across classes) and hide the rest.",
        "dequantize": "Integer data k of L levels as (k + u) / L, u ~ U[0, 1) redrawn every epoch (valid and test: "
                      "one fixed draw), for a continuous likelihood; `evaluate` then reports log p of the discrete "
                      "data (the bound minus D log L) and bits/dim (Theis et al. 2016).",
        "labeled_seed": "Which N labels are kept (and how the remainder is spread over classes).",
        "subset": "Keep a seeded random subset of a split, e.g. `{ train = 20000, valid = 2000 }` (the others whole): "
                  "shorter runs on a large data set. Drawn after binarization, in the split's order.",
        "subset_seed": "Which examples `subset` keeps.",
    },
    "model": {
        "kind": "`vae`, `cvae` (conditional VAE), `m2` (semi-supervised, Kingma et al. 2014) or `gmvae` "
                "(Gaussian-mixture VAE: a discrete latent y, clustering).",
        "latent_dim": "The latent size, or `[z1, z2]`: two stochastic layers (a `HierarchicalVAE`).",
        "encoder": "The network of q(z | x): an encoder name or a table with its options.",
        "decoder": "The network of p(x | z): a decoder name or a table with its options.",
        "likelihood": "p(x | z): a likelihood name or a table with its options, e.g. `{ name = \"gaussian\", scale = 0.1 }`.",
        "prior": "p(z): a prior name or a table with its options.",
        "guide": "The family of q(z | x): a guide name or a table with its options.",
        "link_hidden": "Two layers: hidden widths of the z2 -> z1 links (`[]`: linear).",
        "num_classes": "`cvae`, `m2`: labels are 0..num_classes-1.",
        "classifier": "`m2`: the network of q(y | x), a classifier name or a table with its options.",
        "features": "`m2`: a trained VAE run (its folder); M2 is then trained on that frozen VAE's codes "
                    "z1 ~ q(z1 | x) (M1+M2, Kingma et al. 2014). Empty: on the data.",
        "components": "`gmvae`: K, the number of mixture components, the values of the discrete latent y.",
        "component_prior": "`gmvae`: p(y), `uniform` (1/K) or `learned` (pi trained with the rest).",
    },
    "objective": {
        "estimator": "How the gradient is estimated: an estimator name or a table with its options, "
        "e.g. `{ name = \"renyi\", alpha = 0.5 }`. Empty (the default): the model kind's "
        "own, `trace`, and `enum` for the gmvae.",
        "num_particles": "K, the number of particles (samples of z) per data point.",
        "vectorize_particles": "Draw the K particles in one vectorized pass (Pyro's `vectorize_particles`).",
        "jit": "Compile the loss with `torch.jit` (`trace`, `meanfield`, `stl`).",
        "kl_weight": "The weight beta of the KL term: a number >= 0 or a KL schedule table, e.g. "
        "`{ name = \"linear\", start = 0.0, end = 1.0, epochs = 10 }`.",
        "capacity": "`false`, or `{ start, end, epochs, gamma }`: replace the KL term by "
        "gamma |KL - C(t)| (Burgess et al. 2018).",
        "free_bits": "lambda nats per latent dimension: the KL term becomes sum_j max(lambda, KL_j) "
        "(Kingma et al. 2016); 0: off.",
        "reduction": "`sum` uses log p(x | z) summed over features; `mean` averages it, a KL weight of D made explicit.",
        "classification_weight": "`m2`: alpha = classification_weight * N, the weight of the classification term "
                                 "(default 100, from a measured sweep; Kingma et al. 2014 used 0.1).",
        "kl_weight_labels": "`m2`: whether `kl_weight` also scales KL(q(y | x) || p(y)).",
    },
    "train": {
        "epochs": "Passes over the training split.",
        "max_time": "Seconds of training (metrics.csv's `seconds`, counted across resumed attempts) after which "
                    "the run ends at the end of the step that reaches them, the epoch in progress closed as any "
                    "other (its metrics row, `checkpoint.pt`, `best.pt`); 0: no limit. May change on resume, "
                    "to extend a budget.",
        "batch_size": "The global batch (split across processes under torchrun).",
        "labeled_batch_size": "`m2`: labeled pairs per step; 0: the paper's proportion, ceil(N_l / steps), "
                              "every label seen once an epoch.",
        "eval_batch_size": "Batch size of the per-epoch evaluation.",
        "lr": "The learning rate.",
        "optimizer": "A registered optimizer name (see the optimizers below).",
        "seed": "Seeds the initialization, the data order and every random draw of the run.",
        "device": "`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.",
        "threads": "torch's intra-op threads while training. `auto`: the cores other processes leave free "
                   "when the run starts, round(cores - busy cores, measured over 0.1 s), at least 1 and at most "
                   "torch's default (one per core): torch's default on an idle machine, fewer on a busy one, where "
                   "threads that wait for a core stall every operation (measured in docs/speed.md). 0: torch's "
                   "default; N: N threads.",
        "progress": "Show a progress bar on a terminal (without one: one line per epoch).",
        "lr_schedule": "A learning-rate schedule name or a table with its options, e.g. "
        "`{ name = \"plateau\", patience = 5, factor = 0.5 }`.",
        "lr_warmup_steps": "Linear warm-up of the learning rate over the first N steps (0: none).",
        "early_stopping": "`false`, or `{ patience = N, min_delta = 0.0 }`: stop when the validation ELBO stalls.",
        "loggers": "Where metrics go: a list of logger names (see the loggers below).",
        "log_every": "Steps between logged training losses (loggers that record steps).",
        "clip_grad_norm": "Clip the gradients' global norm to this value; 0: no clipping.",
        "max_skipped_steps": "Non-finite steps to skip before the run stops.",
        "checkpoint_every": "Steps between mid-epoch checkpoints (0: at epoch ends only).",
        "train_eval_examples": "Training examples (a fixed seeded random subset) on which each epoch's "
        "true train ELBO is measured.",
        "precision": "`float32`, or `bf16` (autocast; likelihoods and KL terms stay float32).",
        "cuda_graph": "Capture the whole step in a CUDA graph: `auto` (on CUDA where possible), `true` or `false`.",
        "validate": "Pyro's per-site argument checks (slow; for debugging models).",
    },
}

def default_config():
    return {section: {key: copy.deepcopy(default) for key, (default, _) in keys.items()} for section, keys in SCHEMA.items()}


def check_config(config):
    """Check every section and key; return a complete config with defaults filled in."""
    if not isinstance(config, dict):
        raise UserError(f"a config must be a table, got {type_name(config)}")
    unknown = sorted(set(config) - set(SCHEMA))
    if unknown:
        raise UserError(f"unknown config section [{unknown[0]}]; sections are: {', '.join(SCHEMA)}")
    checked = default_config()
    for section, values in config.items():
        if not isinstance(values, dict):
            raise UserError(f"[{section}] must be a table, got {type_name(values)}")
        allowed = dict(SCHEMA[section])
        if section == "data":  # a dataset's own options sit beside the common keys
            name = name_in(DATASETS)(values.get("name", checked["data"]["name"]), "data.name")
            allowed.update({option: (None, lambda v, k: v) for option in DATASETS.options(name)})
        for key, value in values.items():
            if key not in allowed:
                raise UserError(f"unknown key {section}.{key}; allowed in [{section}]: {', '.join(allowed)}")
            checked[section][key] = allowed[key][1](value, f"{section}.{key}")
    if checked["objective"]["estimator"] == "":  # none named: the model kind's own (the gmvae's: enum)
        kind = cast("type[VAE]", MODEL_KINDS.get(checked["model"]["kind"]))  # every kind is a VAE subclass
        checked["objective"]["estimator"] = kind.default_estimator
    return checked


def parse_override(text):
    """`"section.key=value"` -> (["section", "key"], value), the value read as TOML."""
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
    """Apply `--set` overrides in order (`set_key`)."""
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        set_key(config, keys, value, f"--set {text!r}")
    return config


def set_key(config, keys, value, where):
    """Set the dotted key `keys` (a list) of `config` to `value`, in place; `where` names the
    setting in errors. Setting a component's name (`model.decoder.name=conv`) to a different one
    starts that table from the new class's defaults: the old class's options (an MLP's `hidden`)
    mean nothing to it."""
    table = config
    for depth, key in enumerate(keys[:-1]):
        if isinstance(table.get(key), str) and depth >= 1:
            table[key] = {"name": table[key]}  # a component given by name becomes a table
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise UserError(f"{where}: {'.'.join(keys[: depth + 1])} is not a table")
    if len(keys) >= 3 and keys[-1] == "name":
        if table.get("name") != value:
            table.clear()
        table["name"] = value
    else:
        table[keys[-1]] = value


def load_config(path=None, overrides=()):
    """Read a TOML config (or start from the defaults), apply `--set` overrides, check it."""
    return config_from_table({} if path is None else read_toml(path), overrides)


def read_toml(path):
    """The table of the TOML file `path`; a missing, unreadable or invalid file is a one-line error."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"no such config file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a config file: give a TOML file (a run's own is "
                        f"{path}/config.toml), and the run directory with --out") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None


def merged_with_defaults(config):
    """The default config with the sections of `config` laid over it (unchecked)."""
    merged = default_config()
    for section, values in config.items():
        if isinstance(values, dict) and section in merged:
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def config_from_table(config, overrides=()):
    """A config table (as read from TOML) over the defaults, with `--set` overrides, checked."""
    return check_config(apply_overrides(merged_with_defaults(config), overrides))


def save_config(config, path):
    with atomic_write(path, "wb") as f:
        tomli_w.dump(config, f)
