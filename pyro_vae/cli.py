"""The `pyro-vae` command line.

    pyro-vae train [CONFIG] [--set section.key=value ...] [--out DIR] [--force] [--resume RUN]
    pyro-vae sample RUN [--n 64] [--out FILE.png] [--force] [--seed S] [--label Y] [--component K]
    pyro-vae evaluate RUN [--samples 5000] [--split test|valid] [--seed S] [--batch-size B] [--limit N [--subset-seed S]]
                      [--checkpoint best.pt]
    pyro-vae plot RUN [--split test|valid] [--out DIR] [--limit N] [--checkpoint best.pt]
    pyro-vae sweep SPEC.toml --out DIR [--workers N] [--storage URL] [--report]
    pyro-vae list

Problems with the input (config, data, files) are reported as one line,
`error: ...`, with exit status 2. The work is the library's: `training.train`,
`report.evaluate_run`, `runs.plot_run`; the checks of output paths are `files`'.

Each command imports what it needs (torch, Pyro, matplotlib) when it runs, so
`pyro-vae --help` answers at once.
"""

import argparse
import sys
from pathlib import Path

from . import checks
from .files import check_image_format, check_writable_file, make_directory, writing
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


# `sample` draws one grid into one PNG: its figure is at most 12 inches (1200 pixels) wide,
# so 64 x 64 images leave each about 19 pixels; more would be unreadable (and, drawn at once,
# could exhaust memory: 10^8 draws did). Draws are made SAMPLE_BATCH at a time.
MAX_SAMPLES = 4096
SAMPLE_BATCH = 512


def default_sample_path(run, args):
    """Where `sample` writes without `--out`: RUN/sampled/, never over the run's own samples.png."""
    label = "" if args.label is None else f"-label{args.label}"
    label += "" if args.component is None else f"-component{args.component}"
    checkpoint = "" if args.checkpoint == "checkpoint.pt" else f"-{Path(args.checkpoint).stem}"
    return Path(run) / "sampled" / f"samples-n{args.n}-seed{args.seed}{label}{checkpoint}.png"


def draw_in_batches(vae, n, **options):
    """`n` samples drawn `SAMPLE_BATCH` at a time (the networks' memory stays that of one batch)."""
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

    from .runs import check_not_run_output, load_run, save_class_samples

    vae = load_run(args.run, checkpoint=args.checkpoint)
    labeled = vae.takes_labels
    if args.label is not None and not labeled:
        raise UserError("--label needs a model with labels (model.kind = \"cvae\" or \"m2\")")
    if args.component is not None and not vae.clusters:
        raise UserError("--component needs a model with components (model.kind = \"gmvae\")")
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
        elif args.component is not None:
            drawn = plots.save_grid(draw_in_batches(vae, args.n, component=args.component), out,
                                    title=f"{args.n} samples of component {args.component}: z ~ p(z | y)")
        else:
            drawn = plots.save_grid(draw_in_batches(vae, args.n), out, title=f"{args.n} samples from the prior")
    if not drawn:
        raise UserError(f"the run's data shape {vae.data_shape} is not an image; nothing to draw")
    print(out)


def command_evaluate(args):
    from .report import evaluate_run

    evaluate_run(args.run, num_samples=args.samples, split=args.split, seed=args.seed, batch_size=args.batch_size,
                 limit=args.limit, subset_seed=args.subset_seed, checkpoint=args.checkpoint, verbose=True)
    print(Path(args.run) / "evaluation.json")


def command_plot(args):
    from .runs import plot_run

    for path in plot_run(args.run, split=args.split, out=args.out, limit=args.limit, subset_seed=args.subset_seed,
                         checkpoint=args.checkpoint):
        print(path)


def command_sweep(args):
    from .sweeps import sweep, sweep_report
    from .training import TrainingStopped

    if args.report:
        for path in sweep_report(args.spec, args.out, storage=args.storage):
            print(path)
        return
    try:
        sweep(args.spec, args.out, workers=args.workers, storage=args.storage)
    except TrainingStopped as stop:  # one worker here, stopped by a signal: its trial is queued again
        print(f"{stop}; or run the same sweep command again", file=sys.stderr)
        return stop.exit_status


def registries():
    """Every registry `pyro-vae list` shows, by title."""
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
    s.add_argument("--component", type=int, help="draw from this mixture component y (gmvae): z ~ p(z | y)")
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

    sw = sub.add_parser("sweep", help="a grid or search of runs over config keys (the spec's [sweep] table), "
                        "on an Optuna study: resumable, any number of workers (docs/sweeps.md)")
    sw.add_argument("spec", help="TOML config with a [sweep] table")
    sw.add_argument("--out", required=True, help="sweep directory: trials/<number>/ runs, study.db, the report")
    sw.add_argument("--workers", type=int, help="local worker processes (default: one per core on a CPU)")
    sw.add_argument("--storage", metavar="URL", help="Optuna storage shared by all workers (default: sqlite:///OUT/study.db)")
    sw.add_argument("--report", action="store_true", help="only write the report (trials.csv, summary.csv, figures)")
    sw.set_defaults(func=command_sweep)

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
