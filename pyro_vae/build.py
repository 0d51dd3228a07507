"""From a checked config to the objects of a run: data, model, estimator, schedules, optimizer.

``build(config, data, device)`` is the one place where a config becomes a training set-up;
``training`` runs it, ``runs.load_run`` rebuilds the model of a finished run with
``build_model``.
"""

import dataclasses
import sys
from pathlib import Path

from .annealing import Constant, build_schedule
from .checkpoint import load_checkpoint
from .config import SCHEMA, load_config
from .data import as_data, load_data
from .hierarchical import HierarchicalVAE
from .labels import MODEL_KINDS
from .likelihoods import LIKELIHOODS
from .model import VAE, is_two_layer
from .objectives import ESTIMATORS, Estimator, factors
from .optimizers import LR_SCHEDULES, OPTIMIZERS
from .penalties import build_kl_penalty
from .registry import UserError


def build_data(config, data=None):
    """The dataset a checked config describes, or ``data`` (arrays, tensors, a Data: ``as_data``)
    read as it says; binarize = "auto" follows the likelihood (``data.on_device`` is the trainer's)."""
    options = {k: v for k, v in config["data"].items() if k != "on_device"}
    likelihood = LIKELIHOODS.split_spec(config["model"]["likelihood"])[0]
    if data is not None:
        return as_data(data, options["binarize"], likelihood, dequantize=options["dequantize"],
                       **{k: v for k, v in options.items() if k not in SCHEMA["data"]})
    return load_data(**options, likelihood=likelihood)


def build_model(config, data_shape, data_levels=None):
    """The model a checked config describes (``model.kind``: a class of ``MODEL_KINDS``, which reads
    its own options from the ``[model]`` section: ``VAE.from_config``), for data of shape
    ``data_shape`` (and ``data_levels``). The one rule kept here: the "vae" kind with
    ``model.latent_dim`` a list ``[z1, z2]`` is the two-layer ``HierarchicalVAE``."""
    model = config["model"]
    model_class = MODEL_KINDS.get(model["kind"], "model.kind")
    if model_class is VAE and is_two_layer(model["latent_dim"]):
        model_class = HierarchicalVAE
    return model_class.from_config(model, data_shape, data_levels, load_features)


def load_features(run, data_shape):
    """M1 of M1+M2: the trained VAE of the run directory ``run`` (``model.features``), frozen
    by ``StackedM2``; a one-line error unless it is a one-layer VAE of data of ``data_shape``."""
    path = Path(run)
    if not (path / "config.toml").is_file() or not (path / "checkpoint.pt").is_file():
        raise UserError(f"model.features = {run!r}: not a run directory with config.toml and checkpoint.pt "
                        "(train the VAE, M1, first)")
    config = load_config(path / "config.toml")
    if MODEL_KINDS.get(config["model"]["kind"]) is not VAE or is_two_layer(config["model"]["latent_dim"]):
        raise UserError(f"model.features = {run!r}: M1 must be a run of model.kind = \"vae\" with one latent layer")
    state = load_checkpoint(path / "checkpoint.pt")
    if tuple(state["data_shape"]) != tuple(data_shape):
        raise UserError(f"model.features = {run!r} was trained on data of shape {tuple(state['data_shape'])}, "
                        f"these have shape {tuple(data_shape)}")
    features = build_model(config, state["data_shape"], state.get("data_levels"))
    features.load_state_dict(state["model"])
    return features


def check_density(likelihood, data):
    """Refuse dequantized data under a likelihood that is a mass function: (k + u) / L lies between
    its grid points (a continuous likelihood says so by ``continuous = True``)."""
    if data.dequantize and not likelihood.continuous:
        raise UserError(
            f"data.dequantize = true spreads the data over [0, 1) for a continuous likelihood, but "
            f"{likelihood.registered_name!r} is a mass function on discrete values; use a continuous likelihood "
            "(continuous_bernoulli, gaussian, laplace, beta) or set data.dequantize = false"
        )


def discrete_data_warning(likelihood, data):
    """The warning for integer-valued data (L levels) under a continuous likelihood without
    dequantization: a density can concentrate on the L values and grow without bound there, so its
    ELBO is no log-likelihood of the data. None where that is not the case."""
    if not likelihood.continuous or data.levels is None or data.dequantize:
        return None
    return (
        f"the data take only {data.levels} values, but the {likelihood.registered_name} likelihood is a density, "
        "unbounded on such values (its ELBO can grow without limit and is no log-likelihood of them); "
        'set data.dequantize = true, or use likelihood = "discretized_logistic" (or "bernoulli" for binary data)'
    )


def build_estimator(config, data_shape=None, dataset_size=None):
    """The estimator a checked config describes; ``data_shape`` sizes a neural baseline,
    ``dataset_size`` (the training split's) is the N of total-correlation estimates."""
    objective = config["objective"]
    latent_dim = config["model"]["latent_dim"]
    return ESTIMATORS.build(
        objective["estimator"],
        "objective.estimator",
        num_particles=objective["num_particles"],
        vectorize_particles=objective["vectorize_particles"],
        jit=objective["jit"],
        data_shape=data_shape,
        dataset_size=dataset_size,
        latent_dim=latent_dim if isinstance(latent_dim, int) else None,
    )


@dataclasses.dataclass
class Parts:
    """What a training run is made of (all built from one config)."""

    vae: VAE
    estimator: Estimator
    kl_schedule: object  # step -> beta, the config's objective.kl_weight (annealing.Schedule)
    penalty_schedule: object  # step -> the KL term's penalty (penalties.build_kl_penalty), or None
    features_per_term: int  # D under reduction = "mean" (an effective KL weight of D beta), else 1
    optimizer: object  # torch.optim.Optimizer over the VAE's and the estimator's parameters
    lr_schedule: object  # torch LRScheduler, stepped once per optimizer step
    steps_per_epoch: int

    def effective_kl_weight(self, step):
        """The weight the KL term carries at ``step`` (the estimator's ``kl_weight``): the schedule's
        beta, times D under ``reduction = "mean"``, since -log p / D + beta KL = (1 / D) (-log p + D beta KL)."""
        return self.kl_schedule(step) * self.features_per_term

    def kl_penalty(self, step):
        """The penalty that replaces the KL term at ``step`` (capacity with its C(t), or free
        bits), or None: the KL term is the KL itself."""
        return None if self.penalty_schedule is None else self.penalty_schedule(step)

    def parameters(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def build(config, data, device, batch_size=None):
    """Model, estimator, KL schedule, optimizer and learning-rate schedule for training on ``data``.

    The data are checked against the likelihood's support (except dynamically binarized
    training data, which is binary by construction) and the KL schedule against what the
    estimator can honour, before anything is trained. ``batch_size`` (default
    ``train.batch_size``) sets the steps per epoch that epoch-long schedules count in.
    """
    tc, objective = config["train"], config["objective"]
    vae = build_model(config, data.shape, data.levels).to(device)
    check_density(vae.likelihood, data)
    for split in ("train", "valid", "test"):
        if split != "train" or not data.redrawn:
            vae.likelihood.check_support(data.split(split).x)
    for warning in (vae.likelihood.warning(data.train.x), discrete_data_warning(vae.likelihood, data)):
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
    estimator = build_estimator(config, data.shape, len(data.train)).to(device)
    vae.check_setup(config, data, estimator)
    steps_per_epoch = vae.training_steps(data, batch_size or tc["batch_size"])
    kl_schedule = build_schedule(objective["kl_weight"], steps_per_epoch)
    features_per_term = vae.num_features if objective["reduction"] == "mean" else 1
    constant = kl_schedule(0) * features_per_term if isinstance(kl_schedule, Constant) else None
    estimator.check_kl_weight(constant)
    penalty_schedule = build_kl_penalty(objective, steps_per_epoch)
    if penalty_schedule is not None and vae.takes_labels:
        raise UserError("objective.capacity and objective.free_bits are for model.kind = \"vae\"")
    if penalty_schedule is not None:
        penalty = penalty_schedule(0)
        estimator.check_kl_penalty(penalty.name)
        if penalty.per_dimension:  # free bits: the KL per dimension needs a factorized prior
            factors(vae.prior_dist(), "prior")
    estimator.check_guide(vae.guide_family)
    parameters = [*vae.parameters(), *estimator.parameters()]
    optimizer = OPTIMIZERS.get(tc["optimizer"])(parameters, tc["lr"])
    lr_schedule = LR_SCHEDULES.build(tc["lr_schedule"], "train.lr_schedule", optimizer=optimizer,
                                     total_steps=tc["epochs"] * steps_per_epoch, warmup_steps=tc["lr_warmup_steps"])
    return Parts(vae, estimator, kl_schedule, penalty_schedule, features_per_term, optimizer, lr_schedule, steps_per_epoch)
