"""The ``pyro-vae`` command line.

    pyro-vae train [CONFIG] [--set section.key=value ...] [--out DIR] [--force]
    pyro-vae sample RUN [--n 64] [--out FILE.png] [--seed S]
    pyro-vae list

Problems with the input (config, data, files) are reported as one line,
``error: ...``, with exit status 2.
"""

import argparse
import sys
from pathlib import Path

import torch

from . import plots
from .data import DATASETS
from .likelihoods import LIKELIHOODS
from .nets import DECODERS, ENCODERS
from .objectives import ESTIMATORS
from .priors import PRIORS
from .registry import UserError
from .training import load_run, train

REGISTRIES = {
    "likelihoods": LIKELIHOODS,
    "priors": PRIORS,
    "encoders": ENCODERS,
    "decoders": DECODERS,
    "datasets": DATASETS,
    "estimators": ESTIMATORS,
}


def command_train(args):
    run = train(args.config, out=args.out, force=args.force, overrides=args.set)
    print(f"run directory: {run}")
    for name in ("config.toml", "checkpoint.pt", "metrics.csv", "reconstructions.png", "samples.png", "curves.png"):
        if (run / name).exists():
            print(f"  {run / name}")


def command_sample(args):
    vae = load_run(args.run)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(args.run) / "samples.png"
    if not plots.save_grid(vae.sample(args.n), out, title=f"{args.n} samples from the prior"):
        raise UserError(f"the run's data shape {vae.data_shape} is not an image; nothing to draw")
    print(out)


def command_list(args):
    for title, registry in REGISTRIES.items():
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
    t.set_defaults(func=command_train)

    s = sub.add_parser("sample", help="draw samples from a trained run's prior into a PNG")
    s.add_argument("run", help="run directory")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--out", help="PNG file (default: RUN/samples.png)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=command_sample)

    ls = sub.add_parser("list", help="list every registered likelihood, prior, network, dataset and estimator")
    ls.set_defaults(func=command_list)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
