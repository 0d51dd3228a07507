"""ELBO estimators, by name, and the ELBO's terms for each data point (see ``estimators``)."""

from .estimators import (  # noqa: F401  the names the package, its tests and experiments import
    ESTIMATORS,
    LABEL_ESTIMATORS,
    Estimator,
    PathDerivative,
    RewrapLatents,
    analytic_kl,
    direct_log_weights,
    elbo_terms,
    factors,
    importance_weighted_bound,
    kl_per_dimension,
    log_weights,
    standard_vae,
    tail_fraction,
)
