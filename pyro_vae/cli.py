"""The ``pyro-vae`` command line.

    pyro-vae train [CONFIG] [--set section.key=value ...] [--out DIR] [--force] [--resume RUN]
    pyro-vae sample RUN [--n 64] [--out FILE.png] [--force] [--seed S] [--label Y]
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
import contextlib
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


# ``sample`` draws one grid into one PNG: its figure is at most 12 inches (1200 pixels) wide,
# so 64 x 64 images leave each about 19 pixels; more would be unreadable (and, drawn at once,
# could exhaust memory: 10^8 draws did). Draws are made SAMPLE_BATCH at a time.
MAX_SAMPLES = 4096
SAMPLE_BATCH = 512


def default_sample_path(run, args):
    """Where ``sample`` writes without ``--out``: RUN/sampled/, never over the run's own samples.png."""
    label = "" if args.label is None else f"-label{args.label}"
    checkpoint = "" if args.checkpoint == "checkpoint.pt" else f"-{Path(args.checkpoint).stem}"
    return Path(run) / "sampled" / f"samples-n{args.n}-seed{args.seed}{label}{checkpoint}.png"


def check_not_run_output(path, force):
    """Refuse to replace a file a run wrote itself (samples.png, a checkpoint, ...) unless ``--force``."""
    from .runs import RUN_OUTPUTS

    path = Path(path)
    if path.exists() and path.name in RUN_OUTPUTS and (path.parent / "config.toml").is_file() and not force:
        raise UserError(f"--out {path} is a file the run wrote itself; replace it with --force, or choose another --out")


def draw_in_batches(vae, n, **options):
    """``n`` samples drawn ``SAMPLE_BATCH`` at a time (the networks' memory stays that of one batch)."""
    import torch

    return torch.cat([vae.sample(min(SAMPLE_BATCH, n - start), **options) for start in range(0, n, SAMPLE_BATCH)])


def command_sample(args):
    if args.n < 1:
        raise UserError(f"--n must be an integer >= 1, got {args.n}")
    if args.n > MAX_SAMPLES:
        raise UserError(f"--n {args.n}: one grid holds at most {MAX_SAMPLES} samples (64 x 64); "
                        f"draw more grids with different --seed values")
    checks.seed(args.seed, "--seed")
    import torch

    from .runs import load_run, save_class_samples

    vae = load_run(args.run, checkpoint=args.checkpoint)
    labeled = vae.takes_labels
    if args.label is not None and not labeled:
        raise UserError("--label needs a model with labels (model.kind = \"cvae\" or \"m2\")")
    out = Path(args.out) if args.out else default_sample_path(args.run, args)
    if not args.out:
        make_directory(out.parent)
    check_image_format(out)
    check_writable_file(out)
    check_not_run_output(out, args.force)
    torch.manual_seed(args.seed)
    from . import plots

    with writing(out):
        if labeled and args.label is None:
            drawn = save_class_samples(vae, out, per_class=max(1, args.n // vae.num_classes))
        elif labeled:
            drawn = plots.save_grid(draw_in_batches(vae, args.n, label=args.label), out,
                                    title=f"{args.n} samples of class {args.label}")
        else:
            drawn = plots.save_grid(draw_in_batches(vae, args.n), out, title=f"{args.n} samples from the prior")
    if not drawn:
        raise UserError(f"the run's data shape {vae.data_shape} is not an image; nothing to draw")
    print(out)


def check_image_format(path):
    """Refuse, in one line, an image path whose suffix matplotlib cannot write (or that has none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise UserError(f"--out {path}: name an image file ending in one of: {', '.join('.' + f for f in sorted(formats))}")


@contextlib.contextmanager
def writing(path):
    """A failure to write ``path`` (the disk full, the folder gone) as one line."""
    try:
        yield
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def make_directory(path):
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path}: {error.strerror or error}") from None


def check_writable_file(path):
    """Fail now, in one line, if ``path`` cannot be written, before any work is done for it: a
    directory, a parent that is missing or a file, a folder without permission (``os.access``:
    root passes it), a file system that refuses files (/proc, read-only)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    parent = next((p for p in path.parents if p.exists()), None)
    if not path.parent.is_dir():
        what = f"{parent} is a file" if parent is not None and not parent.is_dir() else f"no directory {path.parent}"
        raise UserError(f"cannot write {path}: {what}")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {path}: permission denied")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UserError(f"cannot write {path}: {path.parent} takes no new files ({error.strerror or error})") from None


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
    config = load_config(Path(run) / "config.toml")
    return vae, build_data(config)


def load_run_split(run, split, checkpoint="checkpoint.pt"):
    """The trained VAE of a run and one split of the data it was trained on (from RUN/config.toml)."""
    vae, data = load_run_data(run, checkpoint)
    return vae, data.split(split)


def split_with_factors(data, split, args):
    """Data holding only the (``--limit``-ed) split, where the data carry factors of variation: what
    the disentanglement metrics and figures read; else None."""
    if not data.has_factors:
        return None
    from .data import Data

    part, _ = limited(data.split(split), args)
    return Data(part, part, part, factor_names=data.factor_names, render=data.render)


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
        check_writable_file(out)  # before the computation, not after it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae, data = load_run_data(args.run, args.checkpoint)
    split, dequantization_levels = data.split(args.split), data.dequantization_levels
    vae = vae.to(device)
    split_size = len(split)
    split, subset_seed = limited(split, args)
    x = split.x
    labels = None
    if vae.takes_labels:  # a model with labels: conditional scores, accuracy
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
        (f"log-likelihood log p(x){discrete}, nats",
         f"{result['log_likelihood']:.3f} +- {result['log_likelihood_standard_error']:.3f}"),
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
    factored = split_with_factors(data, args.split, args)
    if factored is not None and not vae.takes_labels:
        from .disentanglement import evaluate_disentanglement

        scores = evaluate_disentanglement(vae, factored, splits=("test",), seed=seed)
        result["disentanglement"] = scores
        rows += [
            ("MIG (Chen et al. 2018)", f"{scores['mig']:.4f}"),
            ("FactorVAE score", f"{scores['factor_vae_score']:.4f}"),
            ("DCI disentanglement", f"{scores['dci']['disentanglement']:.4f}"),
            ("DCI completeness", f"{scores['dci']['completeness']:.4f}"),
            ("total correlation of q(z), nats", f"{scores.get('total_correlation', float('nan')):.4f}"),
        ]
    for name, value in rows:
        print(f"  {name:<32} {value}", flush=True)
    try:  # the result is printed above whatever happens here
        write_text_atomically(out, json.dumps(result, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"could not write {out} ({error.strerror or error}); the result is printed above") from None
    print(out)


def command_plot(args):
    vae, data = load_run_data(args.run, args.checkpoint)
    split = data.split(args.split)
    out = Path(args.out) if args.out else Path(args.run)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror or error}") from None
    check_writable_file(out / "codes_pca.png")
    split, _ = limited(split, args)
    if vae.takes_labels and split.labels is None:
        raise UserError(f"the {args.split} split has no labels, which a {vae.kind} run needs to be plotted")
    with writing(out):
        plot_figures(vae, split, out, data.factor_names)


def plot_figures(vae, split, out, factor_names=None):
    """The latent-space figures of ``plot`` into the directory ``out``, each path printed (with the
    factor traversals where the split carries factors of variation, named ``factor_names``)."""
    import torch

    from . import plots

    x = split.x
    if vae.takes_labels:  # a model with labels: codes given the true labels, and analogies
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
    if split.factors is not None:  # each dimension's traversal and the factor it is most informative about
        plots.save_factor_traversals(vae, codes, split.factors.numpy(), factor_names, out / "factor_traversals.png")
        written.append(out / "factor_traversals.png")
    for path in written:
        print(path)


def registries():
    """Every registry ``pyro-vae list`` shows, by title."""
    from .annealing import SCHEDULES
    from .data import DATASETS
    from .guides import GUIDES
    from .likelihoods import LIKELIHOODS
    from .models import CLASSIFIERS
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
    s.add_argument("--n", type=int, default=64, help=f"number of samples (at most {MAX_SAMPLES})")
    s.add_argument("--out", help="PNG file (default: RUN/sampled/samples-nN-seedS.png; the run's own samples.png "
                   "is replaced only with --force)")
    s.add_argument("--force", action="store_true", help="allow --out to replace a file the run wrote itself")
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
