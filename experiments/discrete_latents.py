"""Discrete latents: the Gaussian-mixture VAE trained by enumeration, the score function and a relaxed
y at equal wall time, against k-means and a `mog` prior: a sweep (`discrete_latents.toml`); and the cost
of an enumerated step against the number of components (experiments/discrete_latents.md). Writes
`results.csv` (a row a run) and `samples_<estimator>.png` (seed 0), or `speed.csv` (also with `--quick`).

    nice python experiments/discrete_latents.py --quick     # digits, 1 seed, 8 s a run: a few minutes
    nice python experiments/discrete_latents.py             # Fashion-MNIST: 21 runs of 300 s, 2 at once (1-2 h; resumable)
    nice python experiments/discrete_latents.py --report    # the table and figures from the runs so far
    nice python experiments/discrete_latents.py --speed     # step cost, K = 2, 5, 10, 20 vs a VAE, batch 128
"""

import json
import statistics
import time
from pathlib import Path

import torch
from common import arguments, cell, completed_trials, component, places, summarize, write_csv

METHODS = ["gmvae enum", "gmvae score", "gmvae score_neural", "gmvae relaxed", "gmvae relaxed_st",
           "k-means on pixels", "k-means on a VAE's codes", "mog prior, p(k | z) (VaDE-style)"]
COLUMNS = ["seed", "method", "steps", "ms_per_step", "test_elbo", "test_log_likelihood", "clustering_accuracy", "nmi",
           "grad_var_qy_own", "grad_var_qy_at_enum_point", "cluster_sizes"]


def quick_spec(spec):
    """The 8x8 digits, latent size 8, one hidden layer of 128, 8 s a run, one seed, K = 50 samples."""
    net = {"name": "mlp", "hidden": [128], "activation": "elu"}
    spec["data"] = {"name": "digits", "binarize": "static"}
    spec["model"].update(latent_dim=8, encoder=net, decoder=net)
    spec["train"].update(max_time=8, train_eval_examples=250)
    spec["sweep"]["evaluate"].update(samples=50, limit=250)
    for table in spec["sweep"]["grid"]:
        table["train.seed"] = [0]
    return spec


def method(trial):
    if trial["model.kind"] == "gmvae":
        spec = component(trial["objective.estimator"])
        suffix = "_neural" if spec.get("baseline") == "neural" else "_st" if spec.get("straight_through") else ""
        return f"gmvae {spec['name']}{suffix}"
    return METHODS[7] if trial["model.prior"] else METHODS[6]


def clustered(metrics):
    """The columns of `evaluation.clustering_metrics`'s result (evaluation.json's `clustering`)."""
    return {"clustering_accuracy": metrics["clustering_accuracy"], "nmi": metrics["nmi"],
            "cluster_sizes": " ".join(map(str, metrics["cluster_sizes"]))}


def table_rows(trials, k, draws, results):
    """A row per run (and k-means on pixels per seed), with what evaluation.json does not hold."""
    from pyro_vae import evaluation, plots
    from pyro_vae.build import build_estimator
    from pyro_vae.checkpoint import load_checkpoint
    from pyro_vae.config import load_config
    from pyro_vae.runs import limited_split, load_run, load_run_data, read_metrics

    def qy_variance(vae, estimator, x):  # each call draws its noise from the same fixed seed
        return evaluation.gradient_variance(vae, estimator, x, num_draws=draws, params="classifier")["trace_covariance"]

    enum_runs = {int(t["train.seed"]): t["run"] for t in trials if method(t) == "gmvae enum"}
    rows = []
    for trial in trials:
        run, name, seed = Path(trial["run"]), method(trial), int(trial["train.seed"])
        vae, data = load_run_data(run)
        record, last = json.loads((run / "evaluation.json").read_text()), read_metrics(run / "metrics.csv")[-1]
        test, _ = limited_split(data.test, record["num_examples"], record["subset_seed"])  # evaluation's points
        row = {"seed": seed, "method": name, "steps": int(last["step"]), "ms_per_step": 1000 * last["seconds"] / last["step"],
               "test_elbo": record["elbo"], "test_log_likelihood": record["log_likelihood"]}
        if name.startswith("gmvae"):
            row.update(clustered(record["clustering"]))
            config = load_config(run / "config.toml")
            estimator = build_estimator(config, data.shape)
            estimator.load_state_dict(load_checkpoint(run / "checkpoint.pt")["estimator"])  # a trained baseline
            row["grad_var_qy_own"] = qy_variance(vae, estimator, data.test.x[:100])
            if seed in enum_runs:  # every estimator at the same point of training, a fresh one (an untrained baseline)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)  # an untrained neural baseline: the same one on every report
                    fresh = build_estimator(config, data.shape)
                row["grad_var_qy_at_enum_point"] = qy_variance(load_run(enum_runs[seed]), fresh, data.test.x[:100])
            if seed == 0:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    plots.save_grid(vae.sample_by_component(8), results / f"samples_{name[6:]}.png", columns=8,
                                    title=f"{name}: one row per component")
        else:  # the baselines: k-means on the VAE's codes (and on pixels, once a seed), the mog prior's p(k | z)
            codes = name == METHODS[6]
            clusters = evaluation.code_clusters(vae, test.x, k, seed) if codes else \
                evaluation.prior_responsibility_clusters(vae, test.x)
            row.update(clustered(evaluation.clustering_metrics(torch.as_tensor(clusters).long(), test.labels, k)))
            if codes:
                pixels = evaluation.clustering_metrics(evaluation.kmeans_clusters(test.x, k, seed), test.labels, k)
                rows.append({"seed": seed, "method": METHODS[5], **clustered(pixels)})
        rows.append(row)
    return sorted(({c: row.get(c, "") for c in COLUMNS} for row in rows), key=lambda r: (r["seed"], METHODS.index(r["method"])))


def speed(out, repeats=30, batch_size=128):
    """Milliseconds per optimizer step of a gmvae `enum` step at K = 2, 5, 10, 20 and of a plain VAE's
    `trace` step, taken in turn; the median of `repeats` rounds after 5 warm-up rounds."""
    from pyro_vae.losses import NegativeELBO
    from pyro_vae.models import GMVAE, VAE
    from pyro_vae.objectives import ESTIMATORS

    torch.set_num_threads(1)
    shape = (1, 28, 28)
    x = (torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    net = {"name": "mlp", "hidden": [256, 256], "activation": "elu"}

    def trainer(model, estimator):  # the loss and the optimizer of one step
        estimator = ESTIMATORS.build(estimator, "e", num_particles=1, vectorize_particles=False, jit=False, data_shape=shape)
        return NegativeELBO(model, estimator), torch.optim.Adam(model.parameters(), lr=1e-3)

    torch.manual_seed(0)
    models = {("vae (trace)", ""): trainer(VAE(shape, latent_dim=16, encoder=net, decoder=net), "trace")}
    for k in (2, 5, 10, 20):
        torch.manual_seed(0)
        models[("gmvae (enum)", k)] = trainer(GMVAE(shape, latent_dim=16, encoder=net, decoder=net, components=k), "enum")
    times = {key: [] for key in models}
    for i in range(repeats + 5):  # round after round, so that a change in the machine's load falls on all alike
        for key, (loss_module, optimizer) in models.items():
            start = time.perf_counter()
            loss = loss_module(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= 5:
                times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(values) for key, values in times.items()}
    vae_median = medians[("vae (trace)", "")]
    rows = [{"model": model, "components": k, "ms_per_step": 1000 * median, "ratio_to_vae": median / vae_median}
            for (model, k), median in medians.items()]
    print(*rows, sep="\n", flush=True)
    write_csv(rows, out / "speed.csv")


def main():
    args = arguments(__doc__, speed={"action": "store_true", "help": "only the step cost against K (one thread)"})
    if args.speed:
        speed(places("discrete_latents", args.quick)[0], repeats=10 if args.quick else 30)
        return
    results, spec, trials = completed_trials("discrete_latents", args, quick_spec)
    if not trials:
        print("no finished runs yet")
        return
    rows = table_rows(trials, spec["model"]["components"], 30 if args.quick else 100, results)
    write_csv(rows, results / "results.csv")
    if args.quick and not args.report:
        speed(results, repeats=5)
    for row in summarize(rows, ("method",), ["clustering_accuracy", "nmi"]):
        print(f"{row['method']:<36} clustering accuracy {cell(row, 'clustering_accuracy', 4)} (n = {row['n']})")


if __name__ == "__main__":
    main()
