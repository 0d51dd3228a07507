"""One prepared check of the GPU path: at most 8 minutes on one GPU, one JSON and one log.

Three parts, each within its share of `--budget` seconds: `tests` (`pytest tests/test_cuda.py`),
`speed` (`experiments/speed.py`'s comparisons at sizes that fit) and `configs` (seconds per epoch of
the published binarized-MNIST configurations). docs/gpu.md says what each part measures, what the
budget skips, where the data comes from and how to run it on a GPU machine. Exit status 1: a part failed.

    python experiments/gpu_check.py runs/gpu_check                    # on the GPU machine
    python experiments/gpu_check.py /tmp/dry --device cpu --dry-run   # every part's code path, tiny sizes, on CPU
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyro
import speed
import torch
from common import ROOT

from pyro_vae.atomic import write_text_atomically
from pyro_vae.build import build_data
from pyro_vae.config import load_config
from pyro_vae.steps import one_line
from pyro_vae.training import Trainer, TrainingStopped

CONFIGS = ROOT / "experiments" / "binarized_mnist"
# (part, share of --budget): 8 minutes on one GPU at the default budget, with ~30 s to spare
PARTS = (("tests", 0.35), ("speed", 0.4), ("configs", 0.25))
MIN_PART_S = 10  # a part with less than this left is skipped
# What each part runs on the GPU (False), and its tiny stand-in for the dry run (True)
SIZES = {
    False: SimpleNamespace(examples=50000, batch_sizes=(128, 1024), rounds=5, steps=40, ll_samples=1000, ll_images=1000,
                           epoch_batch=128, epoch_epochs=3, config_examples=None,  # None: the whole file
                           estimator_runs=[("meanfield", 1, 128), ("stl", 1, 128), ("score", 50, 20), ("iwae", 50, 20),
                                           ("renyi", 50, 20), ("dreg", 50, 20), ("tail_adaptive", 50, 20)]),
    True: SimpleNamespace(examples=512, batch_sizes=(16, 32), rounds=1, steps=2, ll_samples=10, ll_images=8,
                          epoch_batch=32, epoch_epochs=2, config_examples=(200, 100, 100),  # train, valid, test
                          estimator_runs=[("meanfield", 1, 16), ("stl", 1, 16), ("score", 2, 4), ("iwae", 2, 4),
                                          ("renyi", 2, 4), ("dreg", 2, 4), ("tail_adaptive", 2, 4)]),
}


class Tee:
    """Writes to a stream and to the log file."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()
        self.log.flush()


def environment(device):
    """The machine, the GPU and its driver, and the versions of everything that ran."""
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "device": str(device), "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "pyro": pyro.__version__, "pyro_from": str(Path(pyro.__file__).parent.parent),
        "numpy": np.__version__, "commit": output_of(["git", "rev-parse", "HEAD"]),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    gpu_capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    cudnn=torch.backends.cudnn.version(),
                    driver=output_of(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    return info


def output_of(command):
    """What `command` printed (None if nothing), or why it could not run."""
    try:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({one_line(error)})"


def outcome(result, what):
    """A part's (status, result, note) from its recorded errors and skips: "failed" with the first
    error, else "ok" with how many `what` were skipped for time (or None)."""
    if result["errors"]:
        return "failed", result, f"{len(result['errors'])} {what} failed: {result['errors'][0]}"
    return "ok", result, (f"{len(result['skipped'])} {what} skipped for time" if result["skipped"] else None)


# ---- 1. the CUDA tests ----

def junit_results(path):
    """The counts of passed/failed/errors/skipped, the failed tests' ids and each test's seconds from pytest's JUnit XML."""
    if not path.is_file():
        return {"counts": {}, "failed": [], "durations_s": {}}
    counts, failed, durations = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}, [], {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        durations[name] = float(case.get("time", 0))
        tag = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts[{"failure": "failed", "error": "errors"}.get(tag, tag)] += 1
        if tag in ("failure", "error"):
            failed.append(name)
    return {"counts": counts, "failed": failed, "durations_s": durations}


def part_tests(context, budget):
    """`pytest tests/test_cuda.py` in a child process, stopped at the budget."""
    junit = context.out / "test_cuda.xml"
    command = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_cuda.py"), "-rfEs",
               "-p", "no:cacheprovider", "--durations=0", f"--junitxml={junit}"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print("$", " ".join(command), flush=True)
    with tempfile.TemporaryFile("w+") as output:  # a file, not a pipe: what pytest printed survives its timeout
        try:
            returncode = subprocess.run(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                        text=True, timeout=budget).returncode
        except subprocess.TimeoutExpired:
            returncode = None
        output.seek(0)
        text = output.read()
    print(text, end="" if text.endswith("\n") else "\n", flush=True)
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    result = {"command": " ".join(command), "returncode": returncode, "summary": summary, **junit_results(junit)}
    if returncode is None:
        return "failed", result, f"pytest stopped at its budget of {budget:.0f} s"
    if returncode not in (0, 5):  # 5: no test collected
        return "failed", result, f"pytest exited with {returncode}: {summary}"
    return "ok", result, None


# ---- 2. speed.py's comparisons ----

def part_speed(context, budget):
    sizes, device, deadline = context.sizes, str(context.device), time.monotonic() + budget
    x = speed.mnist_like(sizes.examples, context.mnist)
    data = f"binarized MNIST ({context.mnist})" if context.found else f"random binary images {context.missing}"
    result = {"data": data, "examples": len(x), "rounds": sizes.rounds, "steps": sizes.steps,
              "training": [], "estimators": [], "log_likelihood": None, "epoch": None, "skipped": [], "errors": []}
    runs = [("training", "trace", 1, batch, sizes.steps) for batch in sizes.batch_sizes]
    runs += [("estimators", name, particles, batch, sizes.steps // 2 or 1) for name, particles, batch in sizes.estimator_runs]
    items = [(f"{kind} {name} K={particles} batch {batch}", kind, partial(
                 speed.compare_training, x, name, batch, sizes.rounds, min(steps, len(x) // batch), device, particles))
             for kind, name, particles, batch, steps in runs]
    items += [("log_likelihood", "log_likelihood",
               partial(speed.compare_log_likelihood, x, sizes.ll_samples, sizes.rounds, device, sizes.ll_images)),
              ("epoch", "epoch", partial(speed.compare_epoch, x, device, sizes.epoch_batch, sizes.epoch_epochs, ("auto", False)))]
    for label, kind, compare in items:
        if deadline - time.monotonic() < 2:
            result["skipped"].append(f"{label}: the part's budget of {budget:.0f} s ran out")
            continue
        start = time.perf_counter()
        try:
            row = compare()
        except Exception as error:  # noqa: BLE001 - recorded, and the other items go on
            traceback.print_exc()
            result["errors"].append(f"{label}: {one_line(error)}")
            continue
        row["wall_s"] = time.perf_counter() - start
        speed.show(kind, row)
        if kind in ("training", "estimators"):
            result[kind].append(row)
        else:
            result[kind] = row
    return outcome(result, "item(s)")


# ---- 3. the published configurations ----

def config_data(context, directory):
    """(overrides, note): the binarized-MNIST file (whole; in the dry run a seeded random subset of
    it), or, where it is absent, random binary images of its shape standing in for it."""
    counts = context.sizes.config_examples
    if context.found and counts is None:
        return [f"data.path='{context.mnist}'"], f"binarized MNIST ({context.mnist})"
    if context.found:
        subset = "data.subset={{train={}, valid={}, test={}}}".format(*counts)
        return ([f"data.path='{context.mnist}'", subset],
                f"a seeded random subset ({'/'.join(map(str, counts))}) of binarized MNIST ({context.mnist})")
    counts = counts or (50000, 10000, 10000)
    rng = np.random.default_rng(0)
    path = directory / "binarized_mnist.npz"
    splits = {split: (rng.random((n, 784)) < 0.13).astype(np.uint8) for split, n in zip(("train", "valid", "test"), counts)}
    np.savez(path, **splits)
    return [f"data.path='{path}'"], f"random binary images ({'/'.join(map(str, counts))}) {context.missing}"


def epoch_seconds(name, data_overrides, device, out, limit):
    """Train `CONFIGS/name.toml` for two epochs (stopped cleanly after `limit` seconds) and read
    its seconds per epoch from the trainer's metrics rows."""
    published = load_config(CONFIGS / f"{name}.toml")["train"]["epochs"]
    overrides = [*data_overrides, "train.epochs=2", "train.progress=false", f"train.device='{device}'",
                 "data.on_device=true", 'train.cuda_graph="auto"']
    config = load_config(CONFIGS / f"{name}.toml", overrides)
    pyro.set_rng_seed(config["train"]["seed"])
    data = build_data(config)
    data.to(device)
    out.mkdir(parents=True)
    start = time.perf_counter()
    trainer = Trainer(config, data, out, device)
    # Trainer's own clean stop (as on SIGTERM): set from a timer, acted on at the next step.
    timer = threading.Timer(limit, trainer.stop_requests.request, (signal.SIGTERM,))
    timer.start()
    stopped, fit_start = False, time.perf_counter()
    try:
        trainer.fit()
    except TrainingStopped:
        stopped = True
    finally:
        timer.cancel()
    fit_s = time.perf_counter() - fit_start
    seconds = [row["seconds"] for row in trainer.rows]
    row = {
        "config": f"experiments/binarized_mnist/{name}.toml", "overrides": overrides, "published_epochs": published,
        "steps_per_epoch": trainer.steps_per_epoch, "batch_size": config["train"]["batch_size"],
        "captured": trainer.captured, "capture_obstacle": trainer.capture_obstacle,
        "capture_failure": trainer.train_step_fn.failure if trainer.captured else None,
        "epochs_done": len(seconds), "steps_done": trainer.step, "stopped_at_limit_s": limit if stopped else None,
        "first_epoch_s": seconds[0] if seconds else None,
        "epoch_s": seconds[1] - seconds[0] if len(seconds) > 1 else None,
        "fit_s": fit_s, "wall_s": time.perf_counter() - start,
    }
    per_epoch = row["epoch_s"] or row["first_epoch_s"]
    row["epoch_s_from"] = "epoch 2 - epoch 1" if row["epoch_s"] else ("epoch 1 (with warm-up and capture)" if per_epoch else None)
    if per_epoch:
        row["projected_minutes_to_published_epochs"] = per_epoch * published / 60
    return row


def part_configs(context, budget):
    deadline = time.monotonic() + budget
    directory = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data_overrides, note = config_data(context, directory)
    print(f"configs on {note}", flush=True)
    result = {"data": note, "runs": [], "skipped": [], "errors": []}
    names = ("vae", "vamp", "iwae")
    for index, name in enumerate(names):
        limit = (deadline - time.monotonic()) / (len(names) - index)
        if limit < 3:
            result["skipped"].append(f"{name}: the part's budget of {budget:.0f} s ran out")
            continue
        try:
            row = epoch_seconds(name, data_overrides, context.device, directory / name, limit * 0.8)  # the rest: build, figures
            result["runs"].append(row)
            projected = row.get("projected_minutes_to_published_epochs")
            print(f"{name}: {row['epochs_done']} epoch(s) of {row['steps_per_epoch']} steps, {row['epoch_s_from']}: "
                  f"{row['epoch_s'] or row['first_epoch_s'] or float('nan'):.3f} s per epoch, captured {row['captured']}"
                  + (f", projected {projected:.1f} minutes on {context.device.type} to {row['published_epochs']} epochs"
                     if projected else f", stopped after {row['steps_done']} steps in {row['fit_s']:.1f} s"),
                  flush=True)
        except Exception as error:  # noqa: BLE001 - recorded, and the other configurations go on
            traceback.print_exc()
            result["errors"].append(f"{name}: {one_line(error)}")
    return outcome(result, "configuration(s)")


PART_FUNCTIONS = {"tests": part_tests, "speed": part_speed, "configs": part_configs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for check.json and check.log (created)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default where there is one) or cpu")
    parser.add_argument("--dry-run", "--quick", dest="dry_run", action="store_true",
                        help="tiny sizes: every part's code path in about a minute")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts (default 450: 8 minutes with margin)")
    parser.add_argument("--parts", default=",".join(PART_FUNCTIONS), help="which parts, comma-separated (default: all)")
    parser.add_argument("--mnist", help="binarized_mnist.npz (default: the first of speed.MNIST_PLACES; 'none': random stand-in)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own on cuda, 1 on cpu)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(PART_FUNCTIONS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PART_FUNCTIONS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here; use --device cpu --dry-run")
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "check.log", "w")  # noqa: SIM115 - open for the whole run
    sys.stdout, sys.stderr = Tee(sys.__stdout__, log), Tee(sys.__stderr__, log)
    started = time.perf_counter()
    if args.mnist == "none":
        mnist, searched = None, ["(--mnist none)"]
    else:  # speed.MNIST: the first of speed.MNIST_PLACES that exists
        mnist = Path(args.mnist or speed.MNIST)
        searched = [args.mnist] if args.mnist else [str(path) for path in speed.MNIST_PLACES]
    context = SimpleNamespace(out=args.out, device=torch.device(args.device), sizes=SIZES[args.dry_run], mnist=mnist,
                              found=mnist is not None and mnist.is_file(),
                              missing=f"standing in for binarized MNIST: no file at {' or '.join(searched)}")
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "dry_run": args.dry_run,
              "budget_s": args.budget, "environment": environment(context.device), "parts": {}}
    print(f"gpu_check: writing {args.out / 'check.json'} and {args.out / 'check.log'}", flush=True)
    print(json.dumps(report["environment"]), flush=True)
    deadline = time.monotonic() + args.budget
    shares = {name: share for name, share in PARTS if name in wanted}
    for index, name in enumerate(shares):
        left = deadline - time.monotonic()
        # a part's share of what is left, with the time earlier parts did not use passed on
        budget = min(left, left * shares[name] / sum(list(shares.values())[index:]))
        entry = report["parts"][name] = {"budget_s": round(budget, 1)}
        if budget < MIN_PART_S:
            entry.update(status="skipped", reason=f"{left:.0f} s of the {args.budget:.0f} s budget left, under {MIN_PART_S} s")
            print(f"== {name}: skipped ({entry['reason']})", flush=True)
            continue
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        start = time.perf_counter()
        try:
            status, result, reason = PART_FUNCTIONS[name](context, budget)
        except Exception as error:  # noqa: BLE001 - recorded, and the next part goes on
            traceback.print_exc()
            status, result, reason = "failed", None, one_line(error)
        entry.update(status=status, wall_s=round(time.perf_counter() - start, 2), reason=reason, result=result)
        print(f"== {name}: {status} in {entry['wall_s']:.1f} s" + (f" ({reason})" if reason else ""), flush=True)
        write_text_atomically(args.out / "check.json", json.dumps(report, indent=2, default=str))  # kept up to date
    report["wall_s"] = round(time.perf_counter() - started, 2)
    write_text_atomically(args.out / "check.json", json.dumps(report, indent=2, default=str))
    failed = [name for name, entry in report["parts"].items() if entry["status"] == "failed"]
    print(f"gpu_check: {report['wall_s']:.1f} s; " + (f"failed: {', '.join(failed)}; " if failed else "no part failed; ")
          + f"wrote {args.out / 'check.json'} and {args.out / 'check.log'}", flush=True)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
