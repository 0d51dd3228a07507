"""From a checked config to the objects of a run: data, model, estimator, schedules, optimizer.

`build(config, data, device)` is the one place where a config becomes a training set-up, and
`build_training` adds how it trains (the loss, data-parallel, a captured or an eager step);
`training` runs it, `runs.load_run` rebuilds the model of a finished run with
`build_model`.
"""

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .annealing import Constant, build_schedule
from .checkpoint import load_checkpoint
from .config import SCHEMA, load_config
from .data import as_data, load_data, with_subset
from .likelihoods import LIKELIHOODS
from .models import M2, MODEL_KINDS, VAE, HierarchicalVAE, StackedM2, is_two_layer
from .objectives import ESTIMATORS, Estimator, factors
from .optimizers import LR_SCHEDULES, OPTIMIZERS
from .penalties import build_kl_penalty
from .registry import UserError
from .steps import CapturedStep, Step


def build_data(config, data=None):
    """The dataset a checked config describes, or `data` (arrays, tensors, a Data: `as_data`)
    read as it says; binarize = "auto" follows the likelihood (`data.on_device` is the trainer's)."""
    options = {k: v for k, v in config["data"].items() if k != "on_device"}
    likelihood = LIKELIHOODS.split_spec(config["model"]["likelihood"])[0]
    if data is not None:
        given = as_data(data, options["binarize"], likelihood, dequantize=options["dequantize"],
                        **{k: v for k, v in options.items() if k not in SCHEMA["data"]})
        return with_subset(given, options["subset"], options["subset_seed"])
    return load_data(**options, likelihood=likelihood)


def build_model(config: dict[str, Any], data_shape: int | Sequence[int], data_levels: int | None = None) -> VAE:
    """The model a checked config describes (`model.kind`: a class of `MODEL_KINDS`, which reads
    its own options from the `[model]` section: `VAE.from_config`), for data of shape
    `data_shape` (and `data_levels`). The two rules kept here: the "vae" kind with
    `model.latent_dim` a list `[z1, z2]` is the two-layer `HierarchicalVAE`, and the "m2" kind
    with `model.features` (a trained VAE's run) is M1+M2, `StackedM2`."""
    model = config["model"]
    model_class = MODEL_KINDS.get(model["kind"], "model.kind")
    if model_class is VAE and is_two_layer(model["latent_dim"]):
        model_class = HierarchicalVAE
    elif model_class is M2 and model["features"]:
        model_class = StackedM2
    # every model kind is a VAE class (its registry holds Callables to mypy)
    return cast("type[VAE]", model_class).from_config(model, data_shape, data_levels, load_features)


def check_memory(config, data, device):
    """Refuse, in one line and before anything is allocated, a model whose training state cannot fit
    in `device`'s memory: its parameters are counted on the meta device (which allocates nothing),
    and training holds about four times their bytes (the parameters, their gradients and Adam's two
    moments) before any activation. Memory is a CPU's physical memory or a GPU's free memory; where
    it cannot be read, nothing is refused. This catches sizes that cannot fit at all (a
    `model.latent_dim` of 10**9: 770 billion parameters), not a model that fits only just."""
    available = device_memory(torch.device(device))
    if available is None:
        return
    try:
        with torch.device("meta"), warnings.catch_warnings():
            # M1+M2 loads its trained M1 into the meta model: a no-op copy torch warns about, harmless
            # here, where only the parameters' sizes are read
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
            model = build_model(config, data.shape, data.levels)
    except (NotImplementedError, RuntimeError):  # a model that reads real tensors while it is built
        return
    count = sum(p.numel() for p in model.parameters())
    needed = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    if needed > available:
        sizes = [f"model.latent_dim = {config['model']['latent_dim']}"]
        for net in ("encoder", "decoder"):
            spec = config["model"][net]
            if isinstance(spec, dict) and "hidden" in spec:
                sizes.append(f"model.{net}.hidden = {spec['hidden']}")
        raise UserError(
            f"the model would have {count:,} parameters: training needs about {needed / 2**30:,.1f} GiB for them, "
            f"their gradients and Adam's moments, more than the {available / 2**30:,.1f} GiB of {device.type} "
            f"memory; make it smaller ({', '.join(sizes)})"
        )


def device_memory(device):
    """Bytes of memory for training on `device`: physical memory on a CPU, free memory on a GPU;
    None where that cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def load_features(run, data_shape):
    """M1 of M1+M2: the trained VAE of the run directory `run` (`model.features`), frozen
    by `StackedM2`; a one-line error unless it is a one-layer VAE of data of `data_shape`."""
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
    its grid points (a continuous likelihood says so by `continuous = True`)."""
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
    """The estimator a checked config describes; `data_shape` sizes a neural baseline,
    `dataset_size` (the training split's) is the N of total-correlation estimates."""
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
class TrainingComponents:
    """What a training run is made of (all built from one config)."""

    vae: VAE
    estimator: Estimator
    kl_schedule: Callable[[int], float]  # step -> beta, the config's objective.kl_weight (annealing.Schedule)
    penalty_schedule: Callable[[int], Any] | None  # step -> the KL term's penalty (penalties.build_kl_penalty)
    features_per_term: int  # D under reduction = "mean" (an effective KL weight of D beta), else 1
    optimizer: torch.optim.Optimizer  # over the VAE's and the estimator's parameters
    lr_schedule: object  # torch LRScheduler, stepped once per optimizer step
    steps_per_epoch: int

    def effective_kl_weight(self, step):
        """The weight the KL term carries at `step` (the estimator's `kl_weight`): the schedule's
        beta, times D under `reduction = "mean"`, since -log p / D + beta KL = (1 / D) (-log p + D beta KL)."""
        return self.kl_schedule(step) * self.features_per_term

    def kl_penalty(self, step):
        """The penalty that replaces the KL term at `step` (capacity with its C(t), or free
        bits), or None: the KL term is the KL itself."""
        return None if self.penalty_schedule is None else self.penalty_schedule(step)

    def parameters(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def build(config, data, device, batch_size=None):
    """Model, estimator, KL schedule, optimizer and learning-rate schedule for training on `data`.

    The data are checked against the likelihood's support (except dynamically binarized
    training data, which is binary by construction) and the KL schedule against what the
    estimator can honour, before anything is trained. `batch_size` (default
    `train.batch_size`) sets the steps per epoch that epoch-long schedules count in.
    """
    train_config, objective = config["train"], config["objective"]
    check_memory(config, data, device)
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
    estimator.check_model(vae)
    steps_per_epoch = vae.training_steps(data, batch_size or train_config["batch_size"])
    estimator.set_steps_per_epoch(steps_per_epoch)
    kl_schedule = build_schedule(objective["kl_weight"], steps_per_epoch)
    features_per_term = vae.num_features if objective["reduction"] == "mean" else 1
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
    optimizer = OPTIMIZERS.get(train_config["optimizer"])(parameters, train_config["lr"])
    lr_schedule = LR_SCHEDULES.build(train_config["lr_schedule"], "train.lr_schedule", optimizer=optimizer,
                                     total_steps=train_config["epochs"] * steps_per_epoch,
                                     warmup_steps=train_config["lr_warmup_steps"])
    components = TrainingComponents(vae, estimator, kl_schedule, penalty_schedule, features_per_term, optimizer, lr_schedule,
                                    steps_per_epoch)
    estimator.check_kl_weight(components.effective_kl_weight(0) if isinstance(kl_schedule, Constant) else None)
    return components


@dataclasses.dataclass
class Training:
    """How a run trains, decided once from its config, data and device: its `TrainingComponents`, the loss
    module (inside `DistributedDataParallel` under torchrun) and the step that optimizes it."""

    components: TrainingComponents
    loss: nn.Module  # the model kind's training loss (``VAE.training_loss``), per data point
    step: Step  # one optimizer step: ``CapturedStep`` (a CUDA graph) or the eager ``Step``
    capture_obstacle: str | None  # why the step is not captured in a CUDA graph; None: it is

    @property
    def captured(self):
        return self.capture_obstacle is None


def build_training(config, data, device, world_size=1):
    """`build` plus the decisions of how to train: the loss, data-parallel or not, and a captured
    or an eager step (`train.cuda_graph`: "auto" captures where `capture_obstacle` finds
    nothing against it and falls back to eager if the capture fails; true refuses to run without it)."""
    train_config = config["train"]
    if train_config["batch_size"] % world_size:
        raise UserError(f"train.batch_size ({train_config['batch_size']}) must be divisible by the number of processes "
                        f"({world_size})")
    components = build(config, data, device)
    vae = components.vae
    if world_size > 1 and vae.takes_labels:
        raise UserError(f"model.kind = {vae.kind!r} trains in one process; "
                        "data-parallel training (torchrun) is for model.kind = \"vae\"")
    loss = vae.training_loss(components.estimator, components.features_per_term, config["objective"], data)
    if world_size > 1:
        loss = nn.parallel.DistributedDataParallel(loss, device_ids=[device.index] if device.type == "cuda" else None)
    if train_config["cuda_graph"] is False:
        obstacle = "train.cuda_graph = false"
    else:
        obstacle = capture_obstacle(config, vae, components.estimator, components.optimizer, device, world_size)
    if train_config["cuda_graph"] is True and obstacle:
        raise UserError(f"train.cuda_graph = true is not possible: {obstacle}; set train.cuda_graph = \"auto\" or false")
    step_class, options = (CapturedStep, {"fall_back": train_config["cuda_graph"] == "auto"}) if obstacle is None else (Step, {})
    step = step_class(loss, components.optimizer, components.lr_schedule, components.parameters(), device,
                      train_config["clip_grad_norm"], train_config["precision"], **options)
    return Training(components, loss, step, obstacle)


def capture_obstacle(config, vae, estimator, optimizer, device, world_size):
    """Why this run's step cannot be captured in a CUDA graph, or None if it can (`train.cuda_graph`)."""
    if device.type != "cuda":
        return f"the training device is {device.type}, and CUDA graphs need a CUDA device"
    if world_size > 1:
        return "one graph per data-parallel rank is not supported yet: DistributedDataParallel runs eagerly"
    if config["train"]["validate"]:
        return "train.validate = true: Pyro's argument checks read values from the device"
    if vae.takes_labels:
        return f"model.kind = {config['model']['kind']!r} trains on batches of (x, y), which the captured step does not take yet"
    if not optimizer.defaults.get("fused"):
        return f"optimizer {config['train']['optimizer']!r} has no fused kernel here to skip a non-finite step on the device"
    if config["objective"]["capacity"]:
        return "objective.capacity: C(t) enters the loss as a Python number, which a graph would freeze"
    return estimator.capture_obstacle(vae)
