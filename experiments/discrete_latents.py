"""Discrete latents: the Gaussian-mixture VAE trained by enumeration, the score function and a relaxed
(Gumbel-softmax) y, at equal wall time, scored by the exact ELBO, the IS log-likelihood, clustering
accuracy and NMI, against k-means on pixels, k-means on a plain VAE's codes and a `mog` prior read as
VaDE does; and the cost of an enumerated step against the number of components.

    nice python experiments/discrete_latents.py --quick           # digits, 1 seed, a couple of minutes
    nice python experiments/discrete_latents.py                   # Fashion-MNIST, 3 seeds, about 2 hours
    nice python experiments/discrete_latents.py --speed           # step cost, K = 2, 5, 10, 20 vs a VAE, batch 128

Every model trains for the same wall time (`--seconds`), with Adam at the same learning rate, from
the same initialization per seed. At the end each model is scored on the test split (the exact
enumerated ELBO, whatever estimator trained it; the IS log-likelihood with (y, z) ~ q), its clusters
argmax q(y | x) against the classes (Hungarian accuracy, NMI), and the gradient variance of
q(y | x)'s own parameters (`gradient_variance(..., params="classifier")`) is measured for every
estimator at the same point: the enumeration-trained model's final parameters.

Outputs: `experiments/results/discrete_latents/{results,speed}.csv` and `samples_<estimator>.png`
(one row per component); in quick mode under the ignored `runs/discrete_latents/quick/`.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_csv  # noqa: E402

from pyro_vae import plots  # noqa: E402
from pyro_vae.build import build_data  # noqa: E402
from pyro_vae.config import check_config  # noqa: E402
from pyro_vae.evaluation import (  # noqa: E402
    clustering_metrics,
    code_clusters,
    evaluate,
    gradient_variance,
    kmeans_clusters,
    model_clusters,
    prior_responsibility_clusters,
)
from pyro_vae.losses import NegativeELBO  # noqa: E402
from pyro_vae.models import GMVAE, VAE  # noqa: E402
from pyro_vae.objectives import ESTIMATORS  # noqa: E402
from pyro_vae.registry import UserError  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "discrete_latents"
QUICK = ROOT / "runs" / "discrete_latents" / "quick"

ESTIMATOR_SPECS = {
    "enum": "enum",
    "score": {"name": "score", "baseline": "decaying_average"},
    "score_neural": {"name": "score", "baseline": "neural"},
    "relaxed": {"name": "relaxed", "temperature": 0.5},
    "relaxed_st": {"name": "relaxed", "temperature": 0.5, "straight_through": True},
}


def settings(quick, seconds):
    if quick:
        return dict(data={"name": "digits", "binarize": "static"}, latent_dim=8, hidden=[128], components=10,
                    batch_size=128, lr=1e-3, seconds=seconds or 8.0, seeds=[0], ll_samples=50, ll_examples=250,
                    draws=30, kmeans_examples=None)
    # fashion-mnist: Debian's dataset-fashion-mnist files, as the other experiments read them
    return dict(data={"name": "fashion-mnist", "binarize": "static"}, latent_dim=16,
                hidden=[256, 256], components=10, batch_size=128, lr=1e-3, seconds=seconds or 300.0,
                seeds=[0, 1, 2], ll_samples=500, ll_examples=2000, draws=100, kmeans_examples=None)


def networks(s):
    net = {"name": "mlp", "hidden": s["hidden"], "activation": "elu"}
    return dict(encoder=net, decoder=net)


def train_for(model, estimator, data, s, seed):
    """Adam on `estimator`'s loss for `s["seconds"]` of wall time; returns (steps, seconds per step)."""
    loss_module = NegativeELBO(model, estimator)
    optimizer = torch.optim.Adam([*model.parameters(), *estimator.parameters()], lr=s["lr"])
    steps, start, epoch = 0, time.perf_counter(), 0
    pyro.set_rng_seed(seed)
    while time.perf_counter() - start < s["seconds"]:
        for x in data.train_batches(s["batch_size"], seed * 1000 + epoch, None, "cpu"):
            loss = loss_module(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= s["seconds"]:
                break
        epoch += 1
    return steps, (time.perf_counter() - start) / max(steps, 1)


def build_estimator(spec, data):
    return ESTIMATORS.build(spec, "objective.estimator", num_particles=1, vectorize_particles=False, jit=False,
                            data_shape=data.shape)


def scores(model, data, s):
    test = data.test.random_subset(s["ll_examples"]) if s["ll_examples"] else data.test
    result = evaluate(model, test.x, num_samples=s["ll_samples"])
    row = {"test_elbo": result["elbo"], "test_log_likelihood": result["log_likelihood"]}
    return row


def run_seed(data, s, seed, out):
    rows, trained = [], {}
    test_x, test_labels = data.test.x, data.test.labels
    for name, spec in ESTIMATOR_SPECS.items():
        torch.manual_seed(seed)
        model = GMVAE(data.shape, latent_dim=s["latent_dim"], components=s["components"], **networks(s))
        estimator = build_estimator(spec, data)
        steps, per_step = train_for(model, estimator, data, s, seed)
        model.eval()
        clusters = model_clusters(model, test_x)
        metrics = clustering_metrics(clusters, test_labels, s["components"])
        own = gradient_variance(model, estimator, data.test.x[:100], num_draws=s["draws"], params="classifier")
        rows.append({"seed": seed, "method": f"gmvae {name}", "steps": steps, "ms_per_step": 1000 * per_step,
                     **scores(model, data, s), "clustering_accuracy": metrics["clustering_accuracy"],
                     "nmi": metrics["nmi"], "grad_var_qy_own": own["trace_covariance"],
                     "cluster_sizes": " ".join(map(str, metrics["cluster_sizes"]))})
        trained[name] = model
        if seed == s["seeds"][0]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                plots.save_grid(model.sample_by_component(8), out / f"samples_{name}.png", columns=8,
                                title=f"gmvae {name}: one row per component")
        print(rows[-1], flush=True)
    # the same point of training for every estimator: the enumeration-trained model's parameters
    same_point = {}
    for name, spec in ESTIMATOR_SPECS.items():
        estimator = build_estimator(spec, data)
        same_point[name] = gradient_variance(trained["enum"], estimator, data.test.x[:100], num_draws=s["draws"],
                                             params="classifier")["trace_covariance"]
    for row in rows:
        row["grad_var_qy_at_enum_point"] = same_point[row["method"].split(" ", 1)[1]]
    # baselines
    k = s["components"]
    rows.append(baseline_row(seed, "k-means on pixels", kmeans_clusters(test_x, k, seed), test_labels, k))
    torch.manual_seed(seed)
    plain = VAE(data.shape, latent_dim=s["latent_dim"], **networks(s))
    steps, per_step = train_for(plain, build_estimator("trace", data), data, s, seed)
    plain.eval()
    rows.append({**baseline_row(seed, "k-means on a VAE's codes", code_clusters(plain, test_x, k, seed), test_labels, k),
                 "steps": steps, "ms_per_step": 1000 * per_step, **scores(plain, data, s)})
    torch.manual_seed(seed)
    mog = VAE(data.shape, latent_dim=s["latent_dim"], prior={"name": "mog", "components": k}, **networks(s))
    steps, per_step = train_for(mog, build_estimator("trace", data), data, s, seed)
    mog.eval()
    rows.append({**baseline_row(seed, "mog prior, p(k | z) (VaDE-style)", prior_responsibility_clusters(mog, test_x),
                                test_labels, k),
                 "steps": steps, "ms_per_step": 1000 * per_step, **scores(mog, data, s)})
    for row in rows[-3:]:
        print(row, flush=True)
    return rows


def baseline_row(seed, method, clusters, labels, k):
    metrics = clustering_metrics(torch.as_tensor(clusters).long(), labels, k)
    return {"seed": seed, "method": method, "clustering_accuracy": metrics["clustering_accuracy"], "nmi": metrics["nmi"],
            "cluster_sizes": " ".join(map(str, metrics["cluster_sizes"]))}


COLUMNS = ["seed", "method", "steps", "ms_per_step", "test_elbo", "test_log_likelihood", "clustering_accuracy", "nmi",
           "grad_var_qy_own", "grad_var_qy_at_enum_point", "cluster_sizes"]


def speed(out, repeats=30, batch_size=128):
    """Seconds per optimizer step of a gmvae `enum` step at K = 2, 5, 10, 20 and of a plain VAE's `trace`
    step, on 784-feature binary data, batch 128, one thread: the models take their steps in turn, round
    after round (so a change in the machine's load falls on all of them alike), and each one's median
    over `repeats` rounds, after 5 warm-up rounds, is reported."""
    torch.set_num_threads(1)
    shape = (1, 28, 28)
    x = (torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    net = {"name": "mlp", "hidden": [256, 256], "activation": "elu"}

    def stepper(model, spec):
        estimator = ESTIMATORS.build(spec, "e", num_particles=1, vectorize_particles=False, jit=False, data_shape=shape)
        loss_module = NegativeELBO(model, estimator)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            start = time.perf_counter()
            loss = loss_module(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start

        return step

    torch.manual_seed(0)
    models = {("vae (trace)", ""): stepper(VAE(shape, latent_dim=16, encoder=net, decoder=net), "trace")}
    for k in (2, 5, 10, 20):
        torch.manual_seed(0)
        models[("gmvae (enum)", k)] = stepper(GMVAE(shape, latent_dim=16, encoder=net, decoder=net, components=k), "enum")
    times = {key: [] for key in models}
    for i in range(repeats + 5):
        for key, step in models.items():
            seconds = step()
            if i >= 5:
                times[key].append(seconds)
    base = statistics.median(times[("vae (trace)", "")])
    rows = []
    for (model, k), values in times.items():
        median = statistics.median(values)
        rows.append({"model": model, "components": k, "ms_per_step": 1000 * median, "ratio_to_vae": median / base})
        print(rows[-1], flush=True)
    write_csv(rows, out / "speed.csv")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, one seed, a few seconds per model")
    parser.add_argument("--speed", action="store_true", help="only the step cost against K (one thread)")
    parser.add_argument("--seconds", type=float, help="wall time per model (default 300; quick: 8)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; quick: 0)")
    args = parser.parse_args()
    out = QUICK if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.speed:
        speed(out, repeats=10 if args.quick else 30)
        return
    s = settings(args.quick, args.seconds)
    if args.seeds:
        s["seeds"] = args.seeds
    try:
        data = build_data(check_config({"data": s["data"]}))
    except UserError as error:
        sys.exit(f"error: {error} (or run with --quick to use the digits data)")
    if data.test.labels is None:
        sys.exit("error: the data carry no labels to score clusters against")
    rows = []
    for seed in s["seeds"]:
        rows += run_seed(data, s, seed, out)
    write_csv([{c: row.get(c, "") for c in COLUMNS} for row in rows], out / "results.csv")
    if args.quick:
        speed(out, repeats=5)
    means = {}
    for row in rows:
        means.setdefault(row["method"], []).append(row["clustering_accuracy"])
    for method, values in means.items():
        print(f"{method:<36} clustering accuracy {statistics.mean(values):.4f} "
              f"(+- {statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0:.4f})")


if __name__ == "__main__":
    main()
