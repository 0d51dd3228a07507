"""Is memory flat over a long run? RSS and Pyro's param store over 10,000 training steps.

A leak in a long VAE run usually comes from state that grows per step: entries in
Pyro's global param store, cached traces, or tensors kept alive by a logged loss.
This trains the default digits model for `--steps` optimizer steps through the
library's own `Trainer.train_step` (the fast path), then as many through Pyro's
traced `Trace_ELBO` (the general path), and records the resident set size.

    python experiments/memory.py              # 10,000 steps each, writes experiments/results/memory/memory.csv
    python experiments/memory.py --quick      # 500 steps each, writes runs/memory/quick/memory.csv
    python experiments/memory.py --steps N    # N steps each (under runs/ unless N >= 10,000)
"""

import resource
from pathlib import Path

import pyro
import torch
from common import arguments, places, write_csv

from pyro_vae.build import build_data
from pyro_vae.config import load_config
from pyro_vae.training import Trainer


def rss_mib():
    """Current resident set size, from /proc (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(path_name, estimator_options, steps, every):
    config = load_config(None, ["train.progress=false", "train.device='cpu'", *estimator_options])
    data = build_data(config)
    trainer = Trainer(config, data, Path("runs/memory"), torch.device("cpu"))
    rows, step, epoch = [], 0, 0
    while step < steps:
        epoch += 1  # the data order is a function of the epoch, as in training
        for x in data.train_batches(64, epoch, trainer.noise, "cpu"):
            trainer.train_step(x)
            step += 1
            if step % every == 0:
                rows.append({"path": path_name, "step": step, "rss_mib": round(rss_mib(), 1),
                             "param_store_entries": len(pyro.get_param_store().keys())})
                print(f"{path_name:>8} step {step:>6}: RSS {rows[-1]['rss_mib']:.1f} MiB, "
                      f"param store {rows[-1]['param_store_entries']} entries", flush=True)
            if step == steps:
                break
    return rows


def main():
    args = arguments(__doc__, steps={"type": int, "default": None})
    steps = args.steps or (500 if args.quick else 10000)
    torch.set_num_threads(1)
    every = max(steps // 10, 1)
    rows = run("fast", [], steps, every)
    rows += run("traced", ["objective.estimator='score'"], steps, every)  # score always traces
    for path in ("fast", "traced"):
        mine = [r for r in rows if r["path"] == path]
        print(f"{path}: RSS from step {mine[0]['step']} to {mine[-1]['step']} grew "
              f"{mine[-1]['rss_mib'] - mine[0]['rss_mib']:+.1f} MiB")
    write_csv(rows, places("memory", args.quick or steps < 10000)[0] / "memory.csv")


if __name__ == "__main__":
    main()
