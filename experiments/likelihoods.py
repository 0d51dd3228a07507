"""Which likelihood for grey-level images? The same VAE under each, on one scale (bits/dim of the 8-bit
images: a bound for the densities, trained and tested on dequantized images, exact for the discretized
logistic; `bernoulli` on grey levels, the common mistake, is no density): a sweep (`likelihoods.toml`,
experiments/likelihoods.md). Writes `likelihoods.csv` (a row a likelihood) and `reconstructions_<name>.png`.

    python experiments/likelihoods.py --quick    # digits, about two minutes
    python experiments/likelihoods.py            # Fashion-MNIST subset, the numbers in likelihoods.md
    python experiments/likelihoods.py --report   # the table and figures from the runs so far
"""

import math

import pyro.distributions as dist
from common import arguments, completed_trials, component, write_csv

from pyro_vae.likelihoods import LIKELIHOODS, Bernoulli

MISTAKE = "bernoulli (grey levels)"


@LIKELIHOODS.register("bernoulli_on_grey_levels")
class BernoulliOnGreyLevels(Bernoulli):
    """The common mistake, this experiment's own: Bernoulli log-mass on grey levels (`continuous`: on dequantized data)."""

    continuous = True

    def forward(self, params, x=None):
        # validate_args=False: Pyro would (rightly) refuse a non-binary observation
        return dist.Bernoulli(logits=params[:, 0], validate_args=False).to_event(self.event_dim)

    def check_support(self, x):
        """Accepts [0, 1] on purpose: this is the mistake being measured."""


def quick_spec(spec):
    """The 8x8 digits (17 levels, whole splits), one hidden layer of 64, latent 8, batch 64, 30 epochs, K = 200."""
    spec["data"] = {"name": "digits", "binarize": "none", "dequantize": True}
    spec["model"].update(latent_dim=8, encoder={"name": "mlp", "hidden": [64]}, decoder={"name": "mlp", "hidden": [64]})
    spec["train"].update(epochs=30, batch_size=64)
    spec["sweep"]["evaluate"].update(samples=200, limit=250)
    return spec


def setting(trial):
    """The likelihood's name in the table: "gaussian, learned sigma"."""
    likelihood = component(trial["model.likelihood"])
    name, scale = likelihood["name"], likelihood.get("scale")
    if name == "bernoulli_on_grey_levels":
        return MISTAKE
    if isinstance(scale, float):  # the spec's Gaussian of summed squared error
        return f"{name}, sigma = 1/sqrt(2)"
    return f"{name}, {scale} {'sigma' if name == 'gaussian' else 'scale'}" if scale else name


def slug(name):
    """A file name for a setting: "gaussian, learned sigma" -> "gaussian_learned_sigma"."""
    return "_".join("".join(c if c.isalnum() else " " for c in name).split())


def likelihood_row(trial, spec, results):
    """The row of `likelihoods.csv`, in the density's nats on dequantized data (the record's figures
    plus D log L); the reconstructions figure of the first 32 scored images."""
    from pyro_vae import plots
    from pyro_vae.evaluation import bits_per_dim
    from pyro_vae.runs import limited_split, load_run_data

    evaluate = spec["sweep"]["evaluate"]
    vae, data = load_run_data(trial["run"], evaluate["checkpoint"])
    name, offset = setting(trial), trial.get("dequantization_offset", 0.0)
    x = limited_split(data.test, evaluate["limit"])[0].x[:32]
    plots.save_reconstructions(x, vae.reconstruct(x), results / f"reconstructions_{slug(name)}.png")
    comparable = name != MISTAKE
    return {"likelihood": name, "data": "dequantized" if data.dequantize else "discrete",
            "test_elbo": trial["elbo"] + offset, "test_reconstruction": trial["reconstruction"] + offset,
            "test_kl": trial["kl"], "test_log_likelihood": trial["log_likelihood"] + offset,
            "log_likelihood_standard_error": trial["log_likelihood_standard_error"],
            "elbo_bits_per_dim": bits_per_dim(trial["elbo"], vae.num_features) if comparable else math.nan,
            "log_likelihood_bits_per_dim": trial["bits_per_dim"] if comparable else math.nan,
            "comparable": comparable, "active_units": trial["active_units"], "test_images": trial["num_examples"],
            "ll_images": trial["num_examples"], "ll_subset_seed": trial.get("subset_seed", ""),
            "importance_samples": trial["num_samples"], "epochs": spec["train"]["epochs"],
            "seconds": trial["seconds"] + trial["evaluation_seconds"]}  # training + evaluation


def main():
    args = arguments(__doc__)
    results, spec, trials = completed_trials("likelihoods", args, quick_spec)
    write_csv([likelihood_row(t, spec, results) for t in trials], results / "likelihoods.csv")


if __name__ == "__main__":
    main()
