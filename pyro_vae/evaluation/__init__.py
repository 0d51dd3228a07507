"""Evaluation: the numbers a VAE is judged by, one concern a module.

- `elbo`: `evaluate_elbo`, the mean ELBO, reconstruction term and KL over a data set,
  with the KL per latent dimension and the number of active units.
  Active units (Burda et al. 2015): dimension d is active when
  `Cov_x(E_q[z_d | x]) > 0.01 Var_p(z_d)`: the criterion is stated for an N(0, I) prior,
  and a learned prior sets its own scale (`prior_variances`).
- `likelihood`: `log_likelihood`, the importance-sampled estimate of log p(x) for each data
  point (Burda et al. 2015), the figure VAEs are compared by (K = 5000 on the test set).
- `units`: bits per dimension, and the offset (`dequantization_offset`) that turns a density's
  figures on dequantized data into those of the discrete data.
- `clustering`: clustering accuracy (Hungarian matching), NMI and cluster sizes against the true
  classes, for a model that clusters (the gmvae) and the baselines (k-means, a mixture prior's
  responsibilities);
- `summary`: `evaluate`, all of the above for one data set, with bits per dimension where
  the data are discrete: under a mass function, or under a density on dequantized data.

Every function draws its noise from a fixed seed on a forked RNG with the model in eval mode
(`seeding.seeded_eval`). The estimators' gradient variance is `objectives.gradient_variance`
(also importable from here); a run directory's evaluation report is `report.evaluate_run`.
"""

from ..objectives.gradient_variance import GRADIENT_GROUPS, gradient_variance
from ..seeding import EVALUATION_SEED, eval_mode
from .clustering import (
    clustering_accuracy,
    clustering_metrics,
    code_clusters,
    contingency,
    kmeans_clusters,
    mean_codes,
    model_clusters,
    nmi,
    prior_responsibility_clusters,
)
from .elbo import (
    ACTIVE_UNIT_THRESHOLD,
    PRIOR_VARIANCE_SAMPLES,
    elbo_terms,
    evaluate_elbo,
    kl_per_dimension,
    labeled_terms,
    prior_variances,
)
from .likelihood import (
    EVALUATION_BATCH_SIZE,
    PARTICLES_PER_PASS,
    direct_log_importance_weights,
    log_importance_weights,
    log_likelihood,
    traced_log_importance_weights,
)
from .summary import evaluate
from .units import bits_per_dim, dequantization_offset, has_discrete_data

__all__ = [
    "ACTIVE_UNIT_THRESHOLD", "EVALUATION_BATCH_SIZE", "EVALUATION_SEED", "GRADIENT_GROUPS", "PARTICLES_PER_PASS",
    "PRIOR_VARIANCE_SAMPLES", "bits_per_dim", "clustering_accuracy", "clustering_metrics", "code_clusters",
    "contingency", "dequantization_offset", "direct_log_importance_weights", "elbo_terms",
    "eval_mode", "evaluate", "evaluate_elbo", "gradient_variance", "has_discrete_data", "kl_per_dimension",
    "kmeans_clusters", "labeled_terms", "log_importance_weights", "log_likelihood", "mean_codes", "model_clusters",
    "nmi", "prior_responsibility_clusters", "prior_variances", "traced_log_importance_weights",
]
