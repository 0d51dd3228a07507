"""8-bit images: a density without dequantization, with it, and a mass function: a sweep
(`dequantization.toml`).

Integer images (Fashion-MNIST's uint8 files, read as k / 255 exactly as a user's uint8 `.npz`
with `data.name = "npz"` is), three ways, with the same network, budget and seed:

- `continuous_bernoulli` on x = k / 255 as they are: the data sit on 256 values (half of
  Fashion-MNIST's pixels are exact 0s), where a density can grow without bound; its "ELBO" is
  positive and grows, and is no log-likelihood of the images (the run prints a warning);
- `continuous_bernoulli` with `data.dequantize = true`: trained on (k + u) / 256, u ~ U[0, 1)
  redrawn each epoch; the evaluation reports log P(k) >= log p((k + u) / 256) - D log 256 and
  bits/dim of the 8-bit images (Theis et al. 2016);
- `discretized_logistic` (the default 5 components): a mass function on k / 255, exact bits/dim.

The last two are on one scale (nats of the discrete images, bits/dim in the usual 8-bit sense).
Each run is scored by the sweep's `evaluate` (`pyro-vae evaluate`'s record). Writes
`dequantization.csv`.

    python experiments/dequantization.py --quick    # the 8x8 digits (17 levels k / 16), about a minute
    python experiments/dequantization.py            # 6,000 Fashion-MNIST images, 1,000 test images
    python experiments/dequantization.py --report   # the table from the runs so far
"""

import math
import sys

from common import arguments, completed_trials, write_csv


def quick_spec(spec):
    """The 8x8 digits, whole splits, 10 epochs."""
    spec["data"] = {"name": "digits"}
    spec["train"]["epochs"] = 10
    return spec


def setting_row(trial):
    """The row of `dequantization.csv`; the trial's `seconds` are its evaluation's (flattened in)."""
    from pyro_vae.build import discrete_data_warning
    from pyro_vae.runs import load_run_data

    vae, data = load_run_data(trial["run"])
    likelihood, dequantize = trial["model.likelihood"], data.dequantize
    setting = likelihood if likelihood != "continuous_bernoulli" else (
        f"{likelihood}, dequantized" if dequantize else f"{likelihood}, k / {data.levels - 1} as they are")
    return {"setting": setting, "dequantize": dequantize, "test_log_likelihood_nats": trial["log_likelihood"],
            "test_elbo_nats": trial["elbo"], "bits_per_dim": trial.get("bits_per_dim", math.nan),
            "density_log_likelihood_nats": trial.get("log_likelihood_density", math.nan),
            "active_units": trial["active_units"], "test_images": trial["num_examples"],
            "samples_K": trial["num_samples"], "train_seconds": trial["seconds"],
            "warned_unbounded": discrete_data_warning(vae.likelihood, data) is not None}


def main():
    args = arguments(__doc__)
    results, _, trials = completed_trials("dequantization", args, quick_spec)
    write_csv([setting_row(t) for t in trials], results / "dequantization.csv")


if __name__ == "__main__":
    sys.exit(main())
