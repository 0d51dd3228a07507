"""From a checked config to the objects of a run: data, model, estimator, schedules, optimizer.

``build(config, data, device)`` is the one place where a config becomes a training set-up;
``training`` runs it, ``runs.load_run`` rebuilds the model of a finished run with
``build_model``.
"""

import dataclasses
import math

from .annealing import Constant, build_schedule
from .data import load_data
from .labels import MODEL_KINDS
from .model import VAE
from .objectives import ESTIMATORS, LABEL_ESTIMATORS, Estimator
from .optimizers import LR_SCHEDULES, OPTIMIZERS
from .registry import UserError


def build_data(config):
    """The dataset a checked config describes (``data.on_device`` is the trainer's to apply)."""
    return load_data(**{k: v for k, v in config["data"].items() if k != "on_device"})


def build_model(config, data_shape):
    """The model a checked config describes (``model.kind``: vae, cvae, m2), for data of shape ``data_shape``."""
    model = config["model"]
    kind = model["kind"]
    options = {}
    if kind != "vae":
        options["num_classes"] = model["num_classes"]
    if kind == "m2":
        options["classifier"] = model["classifier"]
    return MODEL_KINDS[kind](
        data_shape,
        latent_dim=model["latent_dim"],
        encoder=model["encoder"],
        decoder=model["decoder"],
        likelihood=model["likelihood"],
        prior=model["prior"],
        **options,
    )


def data_batches(vae):
    """What a model trains on: "all" (minibatches x), "labeled" ((x, y) pairs) or
    "semi_supervised" (unlabeled x with labeled pairs)."""
    return getattr(vae, "data_batches", "all")


def training_steps(vae, data, batch_size):
    """Optimizer steps in one epoch of the minibatches ``vae`` trains on."""
    kind = data_batches(vae)
    if kind == "semi_supervised":
        return data.semi_supervised_steps(batch_size)
    return math.ceil((data.num_labeled() if kind == "labeled" else len(data.train)) / batch_size)


def check_labeled_setup(config, vae, data, estimator):
    """Refuse, in one line, a model with labels on data without them, or with an estimator,
    JIT or reduction that cannot serve it."""
    kind = config["model"]["kind"]
    if kind == "vae":
        return
    data.check_labels(f"model.kind = {kind!r}", vae.num_classes)
    if not estimator.supports_labels:
        raise UserError(f"objective.estimator = {estimator.registered_name!r} with model.kind = {kind!r}: {LABEL_ESTIMATORS}")
    if config["objective"]["jit"]:
        raise UserError(f"objective.jit = true is not available for model.kind = {kind!r}; set objective.jit = false")
    if kind == "m2" and config["objective"]["reduction"] == "mean":
        raise UserError(
            "objective.reduction = \"mean\" is not available for model.kind = \"m2\": per feature, the label's "
            "terms would need a weight of their own; use reduction = \"sum\" (and kl_weight for beta)"
        )
    if kind == "m2" and estimator.registered_name != "enum":
        raise UserError(
            "model.kind = \"m2\" sums its label out exactly with objective.estimator = \"enum\" "
            "(TraceEnum_ELBO); set it"
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


@dataclasses.dataclass
class Parts:
    """What a training run is made of (all built from one config)."""

    vae: VAE
    estimator: Estimator
    kl_schedule: object  # step -> KL weight (annealing.Schedule)
    features_per_term: int  # D under reduction = "mean" (an effective KL weight of D beta), else 1
    optimizer: object  # torch.optim.Optimizer over the VAE's and the estimator's parameters
    lr_schedule: object  # torch LRScheduler, stepped once per optimizer step
    steps_per_epoch: int

    def kl_weight(self, step):
        """The weight the KL term carries at ``step``: the schedule's beta, times D under
        ``reduction = "mean"``, since -log p / D + beta KL = (1 / D) (-log p + D beta KL)."""
        return self.kl_schedule(step) * self.features_per_term

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
    vae = build_model(config, data.shape).to(device)
    for split in ("train", "valid", "test"):
        if split != "train" or not data.dynamic_binarization:
            vae.likelihood.check_support(data.split(split).x)
    estimator = build_estimator(config, data.shape).to(device)
    check_labeled_setup(config, vae, data, estimator)
    steps_per_epoch = training_steps(vae, data, batch_size or tc["batch_size"])
    kl_schedule = build_schedule(objective["kl_weight"], steps_per_epoch)
    features_per_term = vae.num_features if objective["reduction"] == "mean" else 1
    constant = kl_schedule(0) * features_per_term if isinstance(kl_schedule, Constant) else None
    estimator.check_kl_weight(constant)
    parameters = [*vae.parameters(), *estimator.parameters()]
    optimizer = OPTIMIZERS.get(tc["optimizer"])(parameters, tc["lr"])
    lr_schedule = LR_SCHEDULES.get(tc["lr_schedule"])(optimizer, tc["epochs"] * steps_per_epoch)
    return Parts(vae, estimator, kl_schedule, features_per_term, optimizer, lr_schedule, steps_per_epoch)
