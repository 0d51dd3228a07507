"""The estimator configurations the tests run, read from the registry and the classes' own attributes.

A new estimator (one class and one ``@ESTIMATORS.register`` line) is trained, tested sync-free and
captured (where it declares ``capturable = True``) and compared with the traced path (where it has
a direct loss) without anyone editing a list here.
"""

import torch

from pyro_vae import VAE
from pyro_vae.objectives import ESTIMATORS, ParticleEstimator

# Options that select another code path of one estimator (a baseline, an alpha other than the
# default's); every other registered estimator runs with its defaults.
OPTION_VARIANTS = {
    "score": [{"baseline": "none"}, {"baseline": "decaying_average"}, {"baseline": "neural"}],
    "renyi": [{"alpha": 0.5}],
}


def specs(where=lambda cls: True):
    """``{"name": name, **options}`` for every registered estimator whose class satisfies ``where``,
    once for each of its option variants."""
    for name in ESTIMATORS.names():
        if where(ESTIMATORS.get(name)):
            for options in OPTION_VARIANTS.get(name, [{}]):
                yield {"name": name, **options}


def spec_id(spec):
    """A readable test id: the name and its options (``score-baseline=neural``)."""
    if not isinstance(spec, dict):
        return None
    return "-".join([spec["name"], *(f"{key}={value}" for key, value in spec.items() if key != "name")])


def particles(spec, many):
    """``many`` particles for an estimator built on K particles per data point (a ``ParticleEstimator``),
    else its minimum."""
    cls = ESTIMATORS.get(spec["name"])
    return max(cls.minimum_particles, many if issubclass(cls, ParticleEstimator) else 1)


def _standard_vae(data_shape):
    return VAE(data_shape, latent_dim=2, encoder={"name": "mlp", "hidden": [4]}, decoder={"name": "mlp", "hidden": [4]})


def capturable_cases(many, data_shape):
    """(spec, num_particles) for every estimator that declares itself capturable, at ``many`` particles
    where it declares that capturable too on the library's own programs (``capture_obstacle``), else at
    its minimum, where the declaration promises it."""
    vae = _standard_vae(data_shape)
    for spec in specs(lambda cls: cls.capturable):
        cls = ESTIMATORS.get(spec["name"])
        k = max(cls.minimum_particles, many)
        if ESTIMATORS.build(spec, num_particles=k, data_shape=data_shape).capture_obstacle(vae) is not None:
            k = cls.minimum_particles
        yield spec, k


def direct_cases(many, data_shape):
    """(spec, num_particles) for every estimator with a direct loss (the library's own programs without
    tracing), at ``many`` particles where its direct loss takes them, else at its minimum."""
    vae = _standard_vae(data_shape)
    x = torch.zeros(2, *data_shape)
    for spec in specs(lambda cls: cls.direct_loss is not None):
        cls = ESTIMATORS.get(spec["name"])
        k = max(cls.minimum_particles, many)
        with torch.no_grad():
            if ESTIMATORS.build(spec, num_particles=k, data_shape=data_shape).direct_loss(vae, x, None) is None:
                k = cls.minimum_particles
        yield spec, k
