"""The ``pyro-vae`` command line.

    pyro-vae train [CONFIG] [--set section.key=value ...] [--out DIR] [--force] [--resume RUN]
    pyro-vae sample RUN [--n 64] [--out FILE.png] [--seed S] [--label Y]
    pyro-vae evaluate RUN [--samples 5000] [--split test|valid] [--seed S] [--batch-size B] [--limit N [--subset-seed S]]
                      [--checkpoint best.pt]
    pyro-vae plot RUN [--split test|valid] [--out DIR] [--limit N] [--checkpoint best.pt]
    pyro-vae list

Problems with the input (config, data, files) are reported as one line,
``error: ...``, with exit status 2.

Each command imports what it needs (torch, Pyro, matplotlib) when it runs, so
``pyro-vae --help`` answers at once.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import checks
from .registry import UserError


def command_train(args):
    from .training import TrainingStopped, train

    if args.resume and (args.out or args.force):
        raise UserError("--resume continues the run in its own directory; drop --out and --force")
    try:
        run = train(args.config, out=args.out, force=args.force, overrides=args.set, resume=args.resume)
    except TrainingStopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_status
    print(f"run directory: {run}")
    for name in ("config.toml", "checkpoint.pt", "best.pt", "metrics.csv", "reconstructions.png", "samples.png", "curves.png"):
        if (run / name).exists():
            print(f"  {run / name}")


def command_sample(args):
    if args.n < 1:
        raise UserError(f"--n must be an integer >= 1, got {args.n}")
    checks.seed(args.seed, "--seed")
    import torch

    from . import plots
    from .runs import load_run, save_class_samples

    vae = load_run(args.run, checkpoint=args.checkpoint)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(args.run) / "samples.png"
    check_writable(out)
    labeled = hasattr(vae, "num_classes")
    if args.label is not None and not labeled:
        raise UserError("--label needs a model with labels (model.kind = \"cvae\" or \"m2\")")
    if labeled and args.label is None:
        drawn = save_class_samples(vae, out, per_class=max(1, args.n // vae.num_classes))
    elif labeled:
        drawn = plots.save_grid(vae.sample(args.n, label=args.label), out, title=f"{args.n} samples of class {args.label}")
    else:
        drawn = plots.save_grid(vae.sample(args.n), out, title=f"{args.n} samples from the prior")
    if not drawn:
        raise UserError(f"the run's data shape {vae.data_shape} is not an image; nothing to draw")
    print(out)


def check_writable(path):
    """Fail now, in one line, if ``path`` cannot be written, before any work is done for it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: no directory {path.parent}")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UserError(f"cannot write to {path.parent}: {error.strerror or error}") from None


def write_text_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_run_data(run, checkpoint="checkpoint.pt"):
    """The trained VAE of a run and the data it was trained on (from RUN/config.toml)."""
    from .build import build_data
    from .config import load_config
    from .runs import load_run

    vae = load_run(run, checkpoint=checkpoint)
    return vae, build_data(load_config(Path(run) / "config.toml"))


def load_run_split(run, split, checkpoint="checkpoint.pt"):
    """The trained VAE of a run and one split of the data it was trained on (from RUN/config.toml)."""
    vae, data = load_run_data(run, checkpoint)
    return vae, data.split(split)


def limited(split, args):
    """``--limit N``: N data points of the split drawn at random with ``--subset-seed`` (the
    same points on every machine), never its first N, which are biased when a split is sorted
    (the statically binarized MNIST test split is sorted by class). Returns the subset and
    the seed it was drawn with (None: the whole split)."""
    from .data import SUBSET_SEED

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    seed = SUBSET_SEED if args.subset_seed is None else checks.seed(args.subset_seed, "--subset-seed")
    subset = split.random_subset(args.limit, seed=seed)
    return subset, (seed if len(subset) < len(split) else None)


def command_evaluate(args):
    import torch

    from .evaluation import EVALUATION_SEED, evaluate

    seed = EVALUATION_SEED if args.seed is None else checks.seed(args.seed, "--seed")
    out = Path(args.run) / "evaluation.json"
    if Path(args.run).is_dir():
        check_writable(out)  # before the computation, not after it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae, data = load_run_data(args.run, args.checkpoint)
    split, dequantization_levels = data.split(args.split), data.dequantization_levels
    vae = vae.to(device)
    split_size = len(split)
    split, subset_seed = limited(split, args)
    x = split.x
    labels = None
    if hasattr(vae, "num_classes"):  # a model with labels: conditional scores, accuracy
        if split.labels is None:
            raise UserError(f"the {args.split} split has no labels, which a {vae.kind} run needs to be evaluated")
        labels = split.labels
    vae.likelihood.check_support(x)
    start = time.perf_counter()
    result = evaluate(vae, x, num_samples=args.samples, seed=seed, batch_size=args.batch_size, progress=True,
                      labels=labels, dequantization_levels=dequantization_levels)
    result.update(split=args.split, split_size=split_size, subset_seed=subset_seed,  # None: the whole split
                  seed=seed, checkpoint=args.checkpoint, seconds=time.perf_counter() - start)
    subset = "" if subset_seed is None else f" (a random subset, seed {subset_seed}, of {split_size})"
    print(f"{args.run}: {args.split} split, {result['num_examples']} data points{subset}, K = {args.samples}")
    discrete = "" if dequantization_levels is None else f" of the {dequantization_levels}-level data"
    rows = [
        (f"log-likelihood log p(x){discrete}, nats", f"{result['log_likelihood']:.3f} +- {result['log_likelihood_standard_error']:.3f}"),
        (f"ELBO{discrete}, nats", f"{result['elbo']:.3f}"),
        ("reconstruction E_q log p(x|z)", f"{result['reconstruction']:.3f}"),
        ("KL(q(z|x) || p(z))", f"{result['kl']:.3f}"),
        ("active units", f"{result['active_units']} of {vae.latent_dim}"),
    ]
    for site, kl in result.get("kl_per_layer", {}).items():
        rows.append((f"  KL, layer {site}", f"{kl:.3f} ({result['active_units_per_layer'][site]} active units)"))
    if dequantization_levels is not None:
        rows.append(("  dequantized density's log p", f"{result['log_likelihood_density']:.3f} "
                     f"(minus D log {dequantization_levels} = {result['dequantization_offset']:.3f})"))
    if result["bits_per_dim"] is not None:
        rows.append(("bits per dimension", f"{result['bits_per_dim']:.4f}"))
    if "accuracy" in result:
        rows.append(("accuracy of q(y | x)", f"{result['accuracy']:.4f}"))
    for name, value in rows:
        print(f"  {name:<32} {value}", flush=True)
    try:  # the result is printed above whatever happens here
        write_text_atomically(out, json.dumps(result, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"could not write {out} ({error.strerror or error}); the result is printed above") from None
    print(out)


def command_plot(args):
    import torch

    from . import plots

    vae, split = load_run_split(args.run, args.split, args.checkpoint)
    out = Path(args.out) if args.out else Path(args.run)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror or error}") from None
    check_writable(out / "codes_pca.png")
    split, _ = limited(split, args)
    x = split.x
    if hasattr(vae, "num_classes"):  # a model with labels: codes given the true labels, and analogies
        if split.labels is None:
            raise UserError(f"the {args.split} split has no labels, which a {vae.kind} run needs to be plotted")
        y = split.labels
        codes = torch.cat([vae.encode(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(x), 1000)])
        plots.save_analogies(vae, x[:10], y[:10], out / "analogies.png")
        plots.save_projection(codes, y.numpy(), out / "codes_pca.png")
        for path in (out / "analogies.png", out / "codes_pca.png"):
            print(path)
        return
    codes = torch.cat([vae.encode(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    labels = None if split.labels is None else split.labels.numpy()
    written = []
    if vae.latent_dim == 2:
        if plots.save_manifold(vae, codes, out / "manifold.png"):
            written.append(out / "manifold.png")
        plots.save_latent_scatter(codes, labels, out / "latent_space.png")
        written.append(out / "latent_space.png")
    else:
        if plots.save_traversals(vae, codes, out / "traversals.png"):
            written.append(out / "traversals.png")
        plots.save_projection(codes, labels, out / "codes_pca.png")
        written.append(out / "codes_pca.png")
    for path in written:
        print(path)


def registries():
    """Every registry ``pyro-vae list`` shows, by title."""
    from .annealing import SCHEDULES
    from .data import DATASETS
    from .guides import GUIDES
    from .labels import CLASSIFIERS
    from .likelihoods import LIKELIHOODS
    from .nets import DECODERS, ENCODERS
    from .objectives import ESTIMATORS
    from .priors import PRIORS

    return {
        "likelihoods": LIKELIHOODS,
        "priors": PRIORS,
        "guides": GUIDES,
        "encoders": ENCODERS,
        "decoders": DECODERS,
        "datasets": DATASETS,
        "estimators": ESTIMATORS,
        "kl schedules": SCHEDULES,
        "classifiers": CLASSIFIERS,
    }


def command_list(args):
    for title, registry in registries().items():
        print(f"{title}:")
        for name, description in registry.describe():
            print(f"  {name:<22} {description}")


def parser():
    p = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders as Pyro programs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE from a TOML config (the embedded default without one)")
    t.add_argument("config", nargs="?", help="TOML config file; omit for the embedded default (digits)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    t.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    t.add_argument("--force", action="store_true", help="write into a non-empty --out")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint (--set train.epochs=N to extend it)")
    t.set_defaults(func=command_train)

    s = sub.add_parser("sample", help="draw samples from a trained run's prior into a PNG")
    s.add_argument("run", help="run directory")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--out", help="PNG file (default: RUN/samples.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint", default="checkpoint.pt", help="checkpoint.pt (last) or best.pt (best validation ELBO)")
    s.add_argument("--label", type=int, help="draw this class (cvae, m2); default: one row per class")
    s.set_defaults(func=command_sample)

    e = sub.add_parser("evaluate", help="importance-sampled log-likelihood and diagnostics of a run -> RUN/evaluation.json")
    e.add_argument("run", help="run directory")
    e.add_argument("--samples", type=int, default=5000, help="importance samples K per data point (default 5000)")
    e.add_argument("--split", default="test", choices=("test", "valid"))
    e.add_argument("--seed", type=int, help="seed of the importance samples (default: evaluation.EVALUATION_SEED)")
    e.add_argument("--batch-size", type=int, default=100, help="data points per pass")
    e.add_argument("--limit", type=int, metavar="N",
                   help="evaluate N data points of the split drawn at random with --subset-seed (never its first N: "
                   "a split may be sorted by class); recorded in evaluation.json as num_examples and subset_seed")
    e.add_argument("--subset-seed", type=int, metavar="S", help="seed of the --limit subset (default: data.SUBSET_SEED)")
    e.add_argument("--checkpoint", default="checkpoint.pt", help="checkpoint.pt (last) or best.pt (best validation ELBO)")
    e.set_defaults(func=command_evaluate)

    pl = sub.add_parser("plot", help="latent-space figures of a run: manifold and codes (2-D z), else traversals and PCA; "
                        "for cvae and m2, analogies and PCA")
    pl.add_argument("run", help="run directory")
    pl.add_argument("--split", default="test", choices=("test", "valid"))
    pl.add_argument("--limit", type=int, default=5000, metavar="N",
                    help="data points to encode, drawn at random with --subset-seed (default 5000)")
    pl.add_argument("--subset-seed", type=int, metavar="S", help="seed of the --limit subset (default: data.SUBSET_SEED)")
    pl.add_argument("--out", help="directory for the PNGs (default: RUN)")
    pl.add_argument("--checkpoint", default="checkpoint.pt", help="checkpoint.pt (last) or best.pt (best validation ELBO)")
    pl.set_defaults(func=command_plot)

    ls = sub.add_parser("list", help="list every registered likelihood, prior, network, dataset and estimator")
    ls.set_defaults(func=command_list)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
