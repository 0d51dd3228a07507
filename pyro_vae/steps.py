"""The training step: loss, backward, gradient check and clipping, optimizer step, with no read
from the device; run eagerly, or captured once in a CUDA graph and replayed.

A GPU runs ahead of Python only while Python never waits for it. So the step keeps its
bookkeeping on the device and nothing in it calls `.item()`:

- the KL weight is a 0-dim device tensor, filled before each step (the estimator's
  handler scales by it, so a schedule keeps working inside a captured graph);
- the finiteness of the loss and gradients is a device boolean `finite`; the optimizer
  skips a non-finite step on the device (fused Adam, AdamW and SGD take it as
  `found_inf`, the mechanism of torch's `GradScaler`: parameters and optimizer state
  stay exactly as they were), and counters record how many steps were skipped and the
  first one that was; the learning-rate schedule advances at every step, skipped or not
  (telling them apart would need that read);
- the epoch's loss is summed on the device over the finite steps.

The trainer reads these counters only when it needs a number: the progress bar's loss,
a checkpoint, the end of an epoch. A non-finite step is therefore acted on when read
(the run stops with the step's number and the last good checkpoint intact, or skips up
to `train.max_skipped_steps` such steps), not at the step itself. An optimizer with no
device-side skip (RMSprop) reads `finite` at every step instead.

`CapturedStep` records the same step once in a `torch.cuda.CUDAGraph` (after warm-up
steps on a side stream, which are ordinary training steps) and replays it for every
full batch: one launch instead of hundreds. Its input is a static buffer the batch is
copied into; a batch of another shape (the short last batch of an epoch) runs eagerly,
the same objective on the same parameters. A capture that fails (at warm-up, capture or
the first replay) is undone exactly and the run goes on eagerly (`train.cuda_graph =
"auto"`) or stops with one line (`true`).
"""

import contextlib
import copy
import sys

import torch
from torch import nn

from .checkpoint import rng_state, set_rng_state
from .registry import UserError


class Step:
    """One optimizer step on a minibatch, sync-free: `step(x, kl_weight)`.

    `loss_module(x, kl_weight)` is the per data point loss (`losses.NegativeELBO`,
    possibly inside DistributedDataParallel); `parameters` are those the optimizer updates.
    """

    def __init__(self, loss_module, optimizer, lr_schedule, parameters, device, clip_grad_norm=0.0, precision="float32"):
        self.loss_module, self.optimizer, self.lr_schedule = loss_module, optimizer, lr_schedule
        self.parameters, self.device = list(parameters), torch.device(device)
        self.clip_grad_norm, self.precision = clip_grad_norm, precision
        self.skips_on_device = bool(optimizer.defaults.get("fused"))
        zeros = lambda dtype: torch.zeros((), dtype=dtype, device=self.device)  # noqa: E731
        self.kl_weight = zeros(torch.float32)
        self.loss_sum, self.count = zeros(torch.float64), zeros(torch.float64)  # over finite steps of the epoch
        self.skipped = zeros(torch.int64)  # non-finite steps so far
        self.first_bad_step = zeros(torch.int64) - 1  # the step number (0-based) of the first, -1: none
        self.first_bad_loss = zeros(torch.float32)
        self.first_bad_was_loss = zeros(torch.bool)  # the loss itself (else only a gradient) was non-finite
        self.step_number = zeros(torch.int64)  # the number of steps taken, on the device
        self.last_loss = zeros(torch.float32)
        self.kl_penalty = None

    def __call__(self, x, kl_weight, kl_penalty=None):
        """Take the step with `kl_weight` (a float: the schedule's value times D under "mean") and
        the KL penalty of the step, if any (`penalties`: capacity or free bits)."""
        self.kl_weight.fill_(kl_weight)
        self.kl_penalty = kl_penalty
        self.run(x)
        self.lr_schedule.step()  # Python arithmetic on the step count; fills a tensor lr in place

    def autocast(self, cache_enabled=True):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, torch.bfloat16, cache_enabled=cache_enabled)
        return contextlib.nullcontext()

    def run(self, x, cache_enabled=True):
        """The step's arithmetic, every operation on tensors (what a graph records)."""
        with self.autocast(cache_enabled):
            loss = self.loss_module(x, self.kl_weight, self.kl_penalty)
        loss.backward()
        grads = [p.grad for p in self.parameters if p.grad is not None]
        # A NaN or inf anywhere makes the sum of all gradients non-finite: one cheap pass
        # (finite gradients would have to exceed 1e38 in sum to be mistaken for a fault).
        loss_is_finite = torch.isfinite(loss.detach())
        finite = loss_is_finite
        if grads:
            finite = finite & torch.isfinite(torch.stack([g.sum() for g in grads]).sum())
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.parameters, self.clip_grad_norm, foreach=True)
        if self.skips_on_device:
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
        elif finite.item():  # this optimizer cannot skip on the device: read the flag
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._count(loss.detach().float(), finite, loss_is_finite, len(x))

    @torch.no_grad()
    def _count(self, loss, finite, loss_is_finite, batch_size):
        bad = ~finite
        first = bad & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(first, self.step_number, self.first_bad_step))
        self.first_bad_loss.copy_(torch.where(first, loss, self.first_bad_loss))
        self.first_bad_was_loss.copy_(torch.where(first, ~loss_is_finite, self.first_bad_was_loss))
        self.skipped.add_(bad.long())
        self.loss_sum.add_(torch.where(finite, loss.double() * batch_size, 0.0))
        self.count.add_(finite.double() * batch_size)
        self.last_loss.copy_(loss)
        self.step_number.add_(1)

    # ---- reading the counters (each read waits for the device) ----

    def epoch_loss(self):
        """(sum of per-point losses, number of points) over the finite steps since the last reset."""
        return [self.loss_sum.item(), self.count.item()]

    def set_epoch_loss(self, values):
        self.loss_sum.fill_(values[0])
        self.count.fill_(values[1])

    def faults(self):
        """(number of skipped steps, first skipped step's number or None, its loss, whether the loss was non-finite)."""
        skipped = int(self.skipped.item())
        if not skipped:
            return 0, None, None, False
        return skipped, int(self.first_bad_step.item()), self.first_bad_loss.item(), bool(self.first_bad_was_loss.item())

    def set_faults(self, skipped, step_number):
        """Restore the counters of a resumed run: `skipped` steps so far, `step_number` steps taken."""
        self.skipped.fill_(skipped)
        self.step_number.fill_(step_number)


class CaptureFailed(UserError):
    """The step could not be captured under `train.cuda_graph = true` (the state before the attempt is
    restored), or the state could not be restored after a failed capture."""


def one_line(error):
    """An exception as one line: its type and its message's first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


class CapturedStep(Step):
    """`Step` recorded in a CUDA graph at the first full batch and replayed for every batch of that shape.

    Warm-up, capture and the first replay are each an *attempt*, taken from a snapshot of
    everything the step changes (parameters and buffers, optimizer state, learning-rate
    schedule, counters, every RNG). If an attempt raises (an operation capture does not
    allow, a read from the device, an allocator error), the snapshot is restored and:
    with `fall_back` (`train.cuda_graph = "auto"`) one line is printed and this and every
    later step run eagerly, so the run's numbers are an eager run's from that step on;
    without (`train.cuda_graph = true`) `CaptureFailed` is raised, as it is in
    either mode if the snapshot cannot be restored (a CUDA error that stays set).
    """

    warmup_steps = 3  # eager steps on a side stream before capture (cuBLAS and allocator set-up)

    def __init__(self, *args, fall_back=False, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.skips_on_device:
            raise UserError("train.cuda_graph = true needs an optimizer that skips non-finite steps on the device (adam, adamw)")
        self.fall_back = fall_back
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.warmed_up = 0
        self.failure = None  # why capture failed (then every step runs eagerly)
        self.stage = None  # the attempt under way: "warm-up", "capture" or "first replay"

    def run(self, x, cache_enabled=True):
        if (self.graph is not None and self.static_x is not None  # set together (static_x first), cleared together
                and x.shape == self.static_x.shape and x.dtype == self.static_x.dtype):
            self.static_x.copy_(x)
            self.graph.replay()
            return
        if self.graph is not None or self.failure is not None:
            super().run(x)  # a batch of another shape (the short last one), or no graph: eagerly
            return
        self.stage, attempt = ("warm-up", self._warm_up) if self.warmed_up < self.warmup_steps else ("capture", self._capture)
        saved = self._snapshot()
        try:
            attempt(x)
        except Exception as error:  # noqa: BLE001 - any failure of the attempt: restore, then fall back or stop
            self.failure = f"the captured step failed at its {self.stage} ({one_line(error)})"
            try:
                self._restore(saved)
            except Exception as restore_error:  # noqa: BLE001 - e.g. a sticky CUDA error: nothing can go on
                setting = '"auto"' if self.fall_back else "true"
                raise CaptureFailed(f"train.cuda_graph = {setting}: {self.failure}, and the state before it could not "
                                    f"be restored ({one_line(restore_error)})") from error
            if not self.fall_back:
                raise CaptureFailed(f"train.cuda_graph = true: {self.failure}") from error
            print(f"warning: train.cuda_graph = \"auto\": {self.failure}; training goes on eagerly from the state "
                  "before it", file=sys.stderr)
            super().run(x)

    def _warm_up(self, x):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                super().run(x, cache_enabled=False)
        finally:
            torch.cuda.current_stream().wait_stream(side)
        self.warmed_up += 1

    def _capture(self, x):
        """Record the step on `x`'s shape, then replay it once for `x` itself."""
        stream = torch.cuda.current_stream()
        # A learning rate held as a device tensor: the schedule fills it in place between
        # replays, where a Python float would be frozen into the graph at capture. (Only
        # from here: a float32 rate rounds differently, and the warm-up steps are eager ones.)
        for group in self.optimizer.param_groups:
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(group["lr"], device=self.device)
        self.static_x = x.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                super().run(self.static_x, cache_enabled=False)
            # Capture records the kernels without running them: this batch's step is the first
            # replay, waited for so that a fault in it is raised here, inside the attempt.
            self.stage = "first replay"
            graph.replay()
            torch.cuda.current_stream().synchronize()
        except BaseException:
            torch.cuda.set_stream(stream)  # a failed capture_end leaves the capture stream current
            raise
        self.graph = graph

    def _counters(self):
        return (self.loss_sum, self.count, self.skipped, self.first_bad_step, self.first_bad_loss,
                self.first_bad_was_loss, self.step_number, self.last_loss)

    def _snapshot(self):
        """Everything an attempt may change, copied (each warm-up step and the capture: four times a
        run). The optimizer's copy holds the learning rate as it was: a Python float before capture."""
        return {
            "module": {name: value.detach().clone() for name, value in self.loss_module.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "lr_schedule": copy.deepcopy(self.lr_schedule.state_dict()),
            "counters": [counter.clone() for counter in self._counters()],
            "rng": rng_state(),
        }

    @torch.no_grad()
    def _restore(self, saved):
        self.graph, self.static_x = None, None
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_module.load_state_dict(saved["module"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_schedule.load_state_dict(saved["lr_schedule"])
        for counter, value in zip(self._counters(), saved["counters"]):
            counter.copy_(value)
        set_rng_state(saved["rng"])
