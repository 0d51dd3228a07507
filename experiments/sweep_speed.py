"""Does `--workers 2` pay on a two-core machine? An 8-run grid, by one process and by two workers.

The grid: digits, a 64-400-20 MLP (the 784-400-20 network of the papers, on 8 x 8 images),
`objective.kl_weight` in {1, 2} x `train.seed` in {0, 1, 2, 3}, `--epochs` epochs each. Two arms,
each a fresh `pyro-vae sweep` command (imports, worker start-up and report included: the wall
time a user waits), run interleaved `--repeats` times:

- **one process**: `--workers 1` with `train.threads = 0` (torch's default: a thread per core);
- **two workers**: `--workers 2` (each `train.threads = 1`, set by the sweep).

OMP_NUM_THREADS is removed from the commands' environment (it would change torch's default).
The figure of merit is median(two workers) / median(one process); the target is <= 0.6.

    python experiments/sweep_speed.py            # -> experiments/results/sweep_speed/sweep_speed_20_epochs.json
    python experiments/sweep_speed.py --quick    # 2 runs x 1 epoch, once: writes only under runs/
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import tomli_w
from common import ROOT, arguments, places


def spec(epochs, seeds, threads=None):
    train = {"epochs": epochs, "batch_size": 100, "progress": False, "device": "cpu"}
    return {"data": {"name": "digits", "binarize": "dynamic"},
            "model": {"latent_dim": 20, "encoder": {"name": "mlp", "hidden": [400]}, "decoder": {"name": "mlp", "hidden": [400]}},
            "train": train if threads is None else {**train, "threads": threads},
            "sweep": {"grid": {"objective.kl_weight": [1, 2], "train.seed": list(range(seeds))}}}


def timed_sweep(table, out, workers):
    """Wall seconds of one `pyro-vae sweep` command into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    path = out.with_suffix(".toml")
    path.write_text(tomli_w.dumps(table))
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pyro_vae", "sweep", str(path), "--out", str(out), "--workers", str(workers)],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    args = arguments(__doc__, epochs={"type": int, "default": 20}, repeats={"type": int, "default": 3})
    epochs, seeds, repeats = (1, 1, 1) if args.quick else (args.epochs, 4, args.repeats)
    results, scratch = places("sweep_speed", args.quick)
    arms = {"one process": (spec(epochs, seeds, threads=0), 1), "two workers": (spec(epochs, seeds), 2)}
    seconds = {name: [] for name in arms}
    for repeat in range(repeats):
        for name, (table, workers) in arms.items():  # interleaved: the machine's load falls on both arms
            seconds[name].append(timed_sweep(table, scratch / name.replace(" ", "_"), workers))
            print(f"repeat {repeat + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    ratio = statistics.median(seconds["two workers"]) / statistics.median(seconds["one process"])
    command = " ".join(["python", "experiments/sweep_speed.py", *sys.argv[1:]])
    result = {"command": command, "runs": 2 * seeds, "epochs": epochs, "repeats": repeats, "seconds": seconds, "ratio": ratio,
              "target": 0.6, "cores": os.cpu_count(), "load_average": os.getloadavg(), "machine": platform.processor()}
    print(f"two workers / one process: {ratio:.2f} (target <= 0.6)")
    out = results / f"sweep_speed_{epochs}_epochs.json"  # one file per run length: the ratio depends on it
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
