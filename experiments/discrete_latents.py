"""Discrete latents: the Gaussian-mixture VAE trained by enumeration, the score function and a relaxed
y at equal wall time, against k-means and a `mog` prior: a sweep (`discrete_latents.toml`); and the cost
of an enumerated step against the number of components (experiments/discrete_latents.md). Writes
`results.csv` (a row a run) and `samples_<estimator>.png` (seed 0), or `speed.csv` (also with `--quick`).

    nice python experiments/discrete_latents.py --quick     # digits, 1 seed, 8 s a run: a few minutes
    nice python experiments/discrete_latents.py             # Fashion-MNIST: 21 runs of 300 s, 2 at once (1-2 h; resumable)
    nice python experiments/discrete_latents.py --report    # the table and figures from the runs so far
    nice python experiments/discrete_latents.py --speed     # step cost, K = 2, 5, 10, 20 vs a VAE, batch 128
    nice python experiments/discrete_latents.py --data fashion-mnist --longer 600   # enum GMVAEs and VAEs on to 600 s
"""

import json
import math
import statistics
import time
from pathlib import Path

import torch
from common import arguments, cell, completed_trials, component, markdown_table, places, summarize, write_csv

METHODS = ["gmvae enum", "gmvae score", "gmvae score_neural", "gmvae relaxed", "gmvae relaxed_st",
           "k-means on pixels", "k-means on a VAE's codes", "mog prior, p(k | z) (VaDE-style)"]
TICKS = {METHODS[5]: "k-means\npixels", METHODS[6]: "k-means\nVAE codes", METHODS[7]: "mog prior\np(k | z)"}
COLUMNS = ["seed", "method", "steps", "ms_per_step", "test_elbo", "test_log_likelihood", "clustering_accuracy", "nmi",
           "grad_var_qy_own", "grad_var_qy_at_enum_point", "cluster_sizes"]


def digits_spec(spec):
    """The study on the 8x8 digits: one hidden layer of 128, 60 s a run, the whole 250-image test split."""
    net = {"name": "mlp", "hidden": [128], "activation": "elu"}
    spec["data"] = {"name": "digits", "binarize": "static"}
    spec["model"].update(encoder=net, decoder=net)
    spec["train"].update(max_time=60, train_eval_examples=250)
    return spec


def quick_spec(spec):
    """(After `digits_spec`) 8 s a run, one seed, 50 importance samples."""
    spec["train"].update(max_time=8)
    spec["sweep"]["evaluate"].update(samples=50)
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


def scored(run):
    """(model, data, evaluation record, last metrics row, the evaluation's test points) of a run
    scored by the sweep's `evaluate`."""
    from pyro_vae.runs import limited_split, load_run_data, read_metrics

    vae, data = load_run_data(run)
    record, last = json.loads((run / "evaluation.json").read_text()), read_metrics(run / "metrics.csv")[-1]
    test, _ = limited_split(data.test, record["num_examples"], record["subset_seed"])
    return vae, data, record, last, test


def baseline_clustering(name, vae, test, k, seed):
    """The clustering of a baseline VAE: k-means on its mean codes, or the `mog` prior's argmax_k p(k | z)."""
    from pyro_vae import evaluation

    clusters = evaluation.code_clusters(vae, test.x, k, seed) if name == METHODS[6] else \
        evaluation.prior_responsibility_clusters(vae, test.x)
    return clustered(evaluation.clustering_metrics(torch.as_tensor(clusters).long(), test.labels, k))


def table_rows(trials, k, draws, results):
    """A row per run (and k-means on pixels per seed), with what evaluation.json does not hold."""
    from pyro_vae import evaluation, plots
    from pyro_vae.build import build_estimator
    from pyro_vae.checkpoint import load_checkpoint
    from pyro_vae.config import load_config
    from pyro_vae.runs import load_run

    def qy_variance(vae, estimator, x):  # each call draws its noise from the same fixed seed
        return evaluation.gradient_variance(vae, estimator, x, num_draws=draws, params="classifier")["trace_covariance"]

    enum_runs = {int(t["train.seed"]): t["run"] for t in trials if method(t) == "gmvae enum"}
    rows = []
    for trial in trials:
        run, name, seed = Path(trial["run"]), method(trial), int(trial["train.seed"])
        vae, data, record, last, test = scored(run)
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
            row.update(baseline_clustering(name, vae, test, k, seed))
            if name == METHODS[6]:
                pixels = evaluation.clustering_metrics(evaluation.kmeans_clusters(test.x, k, seed), test.labels, k)
                rows.append({"seed": seed, "method": METHODS[5], **clustered(pixels)})
        rows.append(row)
    return sorted(({c: row.get(c, "") for c in COLUMNS} for row in rows), key=lambda r: (r["seed"], METHODS.index(r["method"])))


def plot_clustering(rows, path, title):
    """Clustering accuracy and NMI of every method: seeds as dots, means as bars."""
    from matplotlib.figure import Figure

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    figure = Figure(figsize=(11, 4))
    for index, (metric, label) in enumerate([("clustering_accuracy", "clustering accuracy (Hungarian)"), ("nmi", "NMI")]):
        axis = figure.add_subplot(1, 2, index + 1)
        for x, name in enumerate(methods):
            values = [r[metric] for r in rows if r["method"] == name]
            axis.bar(x, statistics.fmean(values), width=0.6, color="C0" if name.startswith("gmvae") else "C1", alpha=0.5)
            axis.plot([x] * len(values), values, "k.", markersize=4)
        axis.set_xticks(range(len(methods)), [TICKS.get(m, m.removeprefix("gmvae ")) for m in methods], fontsize=7)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{title}; bars: mean over seeds, dots: seeds", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def write_summary(rows, path):
    """The write-up's table: mean +- sd over seeds of every column."""
    numbers = ["steps", "ms_per_step", "test_elbo", "test_log_likelihood", "clustering_accuracy", "nmi",
               "grad_var_qy_own", "grad_var_qy_at_enum_point"]
    rows = [{c: None if v == "" else v for c, v in row.items()} for row in rows]  # "": not measured for this method
    summary = summarize(rows, ("method",), [c for c in numbers if any(r[c] is not None for r in rows)])
    columns = [("method", lambda r: r["method"].replace("|", "\\|")), ("n", lambda r: r["n"])]
    digits = {"steps": 0, "ms_per_step": 1, "test_elbo": 2, "test_log_likelihood": 2, "clustering_accuracy": 3, "nmi": 3,
              "grad_var_qy_own": 3, "grad_var_qy_at_enum_point": 3}
    columns += [(c, lambda r, c=c: "" if math.isnan(r[f"{c}_mean"]) else cell(r, c, digits[c]))
                for c in numbers if f"{c}_mean" in summary[0]]
    markdown_table(sorted(summary, key=lambda r: METHODS.index(r["method"])), columns, path)


def train_on(job):
    """(run, seconds, evaluate) -> the run trained on to `seconds` of training in all, then evaluated."""
    from pyro_vae import train
    from pyro_vae.report import evaluate_run

    run, seconds, evaluate = job
    torch.set_num_threads(1)
    train(resume=run, overrides=[f"train.max_time={seconds}"])
    evaluate_run(run, num_samples=evaluate["samples"], limit=evaluate["limit"], checkpoint=evaluate["checkpoint"])
    return run


def longer(trials, spec, seconds, runs, results, workers):
    """The sweep's `enum` GMVAEs and plain VAEs trained on to `seconds` of training in all (copies under
    `runs/.../longer/`: the sweep's runs stay as they are) and scored as the sweep scores: does the
    GMVAE's clustering pull away from k-means on the VAE's codes with a larger budget?"""
    import multiprocessing
    import shutil

    chosen = [t for t in trials if method(t) in ("gmvae enum", METHODS[6])]
    copies = [runs / "longer" / Path(t["run"]).name for t in chosen]
    for trial, copy in zip(chosen, copies):
        if not copy.exists():
            shutil.copytree(trial["run"], copy)
    jobs = [(str(copy), seconds, spec["sweep"]["evaluate"]) for copy in copies]
    with multiprocessing.get_context("fork").Pool(workers or 2) as pool:  # resumable: a finished copy just evaluates again
        for run in pool.imap_unordered(train_on, jobs):
            print(f"trained on to {seconds} s: {run}", flush=True)
    rows, k = [], spec["model"]["components"]
    for trial, copy in zip(chosen, copies):
        vae, _, record, last, test = scored(copy)
        seed, name = int(trial["train.seed"]), method(trial)
        clustering = clustered(record["clustering"]) if name == "gmvae enum" else baseline_clustering(name, vae, test, k, seed)
        rows.append({"seed": seed, "method": name, "seconds": last["seconds"], "steps": int(last["step"]),
                     "test_elbo": record["elbo"], "test_log_likelihood": record["log_likelihood"], **clustering})
    write_csv(sorted(rows, key=lambda r: (r["seed"], r["method"])), results / f"longer_{seconds}s.csv")
    for row in summarize(rows, ("method",), ["clustering_accuracy", "nmi"]):
        print(f"{seconds} s: {row['method']:<28} clustering accuracy {cell(row, 'clustering_accuracy', 4)}, "
              f"NMI {cell(row, 'nmi', 4)} (n = {row['n']})")


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
    args = arguments(__doc__, speed={"action": "store_true", "help": "only the step cost against K (one thread)"},
                     data={"nargs": "+", "choices": ["fashion-mnist", "digits"], "default": ["fashion-mnist", "digits"],
                           "help": "the studies to run (--quick: digits only)"},
                     longer={"type": int, "metavar": "SECONDS", "help": "after the Fashion-MNIST sweep, train its enum "
                             "GMVAEs and plain VAEs on to SECONDS in all (copies) and score them again"})
    if args.speed:
        speed(places("discrete_latents", args.quick)[0], repeats=10 if args.quick else 30)
        return
    for data in ["digits"] if args.quick else args.data:
        digits = data == "digits"
        results, spec, trials = completed_trials("discrete_latents", args, quick_spec, prepare=digits_spec if digits else None,
                                                 place="discrete_latents/digits" if digits else None)
        if not trials:
            print(f"{data}: no finished runs yet")
            continue
        rows = table_rows(trials, spec["model"]["components"], 30 if args.quick else 100, results)
        write_csv(rows, results / "results.csv")
        write_summary(rows, results / "summary.md")
        plot_clustering(rows, results / "clustering.png", "Fashion-MNIST" if data == "fashion-mnist" else "8x8 digits")
        for row in summarize(rows, ("method",), ["clustering_accuracy", "nmi"]):
            print(f"{data}: {row['method']:<36} clustering accuracy {cell(row, 'clustering_accuracy', 4)} (n = {row['n']})")
        if args.longer and not digits:
            longer(trials, spec, args.longer, places("discrete_latents", args.quick)[1], results, args.workers)
    if args.quick and not args.report:
        speed(places("discrete_latents", args.quick)[0], repeats=5)


if __name__ == "__main__":
    main()
