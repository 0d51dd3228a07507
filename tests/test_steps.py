"""The training step reads nothing from the device, skips a non-finite step exactly on the device,
and the stl estimator's own sync-free ELBO equals Pyro's."""

import contextlib
import copy

import pyro
import pytest
import torch
from conftest import small_vae, tiny_config
from estimator_cases import capturable_cases, spec_id
from pyro.infer import Trace_ELBO

from pyro_vae import VAE, train
from pyro_vae.losses import NegativeELBO
from pyro_vae.objectives import ESTIMATORS, Estimator, PathDerivative, RewrapLatents
from pyro_vae.optimizers import OPTIMIZERS
from pyro_vae.registry import UserError
from pyro_vae.steps import Step

SHAPE = (1, 4, 4)


def binary(n, seed=0):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(seed))


def make_step(vae, estimator, optimizer="adam", clip=0.0):
    loss = NegativeELBO(vae, estimator)
    parameters = list(loss.parameters())
    opt = OPTIMIZERS.get(optimizer)(parameters, 1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return Step(loss, opt, schedule, parameters, "cpu", clip_grad_norm=clip)


@contextlib.contextmanager
def no_reads_from_tensors(monkeypatch):
    """Any read of a tensor's value into Python (.item(), bool(), float(), .tolist()) fails: on a
    GPU each is a synchronization, and inside a CUDA graph capture an error."""

    def refuse(*args, **kwargs):
        raise AssertionError("the step read a value from the device")

    with monkeypatch.context() as patch:
        for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
            patch.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("spec, particles", list(capturable_cases(3, SHAPE)), ids=spec_id)
@pytest.mark.parametrize("prior", ["normal", {"name": "vamp", "components": 3}])
@pytest.mark.trains
def test_every_capturable_estimators_step_reads_nothing_from_the_device(monkeypatch, spec, particles, prior):
    """Every estimator that declares ``capturable = True`` (read from the registry)."""
    vae = small_vae(SHAPE, hidden=8, prior=prior)
    estimator = ESTIMATORS.build(spec, num_particles=particles, data_shape=SHAPE)
    assert estimator.capture_obstacle(vae) is None
    step = make_step(vae, estimator, clip=5.0)
    x = binary(8)
    before = [p.detach().clone() for p in vae.parameters()]
    with pyro.validation_enabled(False), no_reads_from_tensors(monkeypatch):
        for weight in (1.0, 0.5):
            step(x, weight)
    assert step.faults()[0] == 0 and step.step_number.item() == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))  # it trained


def test_capture_is_opt_in_for_a_new_estimator():
    class Unsure(Estimator):
        registered_name = "unsure"

        def differentiable_loss(self, model, guide, x):
            return model(x)

    assert "does not declare its loss capturable" in Unsure().capture_obstacle(small_vae(SHAPE, hidden=8))
    for name in ESTIMATORS.names(capturable=False):  # each gives its reason (the default one, or its own)
        assert ESTIMATORS.build(name).capture_obstacle(small_vae(SHAPE, hidden=8))


def test_pyro_trace_elbo_is_named_as_the_obstacle_to_capture_for_a_redefined_program():
    class Redefined(VAE):
        @pyro.nn.pyro_method
        def model(self, x):
            super().model(x)

    vae = Redefined(SHAPE, latent_dim=2)
    assert "reads every site's log-density with .item()" in ESTIMATORS.build("trace").capture_obstacle(vae)
    assert "torch.jit" in ESTIMATORS.build("trace", jit=True).capture_obstacle(small_vae(SHAPE, hidden=8))


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])  # fused: skipped on the device; rmsprop: read each step
@pytest.mark.trains
def test_a_non_finite_step_is_skipped_exactly_and_counted(optimizer):
    vae = small_vae(SHAPE, hidden=8)
    step = make_step(vae, ESTIMATORS.build("trace"), optimizer)
    assert step.skips_on_device == (optimizer == "adam")
    step(binary(8), 1.0)
    parameters = copy.deepcopy(vae.state_dict())
    optimizer_state = copy.deepcopy(step.optimizer.state_dict())
    poisoned = binary(8, seed=1)
    poisoned[3, 0, 0, 0] = float("nan")
    with pyro.validation_enabled(False):
        step(poisoned, 1.0)
    assert all(torch.equal(parameters[k], v) for k, v in vae.state_dict().items())
    after = step.optimizer.state_dict()["state"]
    for key, state in optimizer_state["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(after[key][name]), torch.as_tensor(value)), name
    skipped, first, loss, was_loss = step.faults()
    assert (skipped, first, was_loss) == (1, 1, True) and loss != loss  # NaN
    assert step.epoch_loss()[1] == 8  # only the finite step's points are counted
    step(binary(8, seed=2), 1.0)  # and training goes on from the same state
    assert step.faults()[:2] == (1, 1) and step.epoch_loss()[1] == 16


@pytest.mark.trains
def test_the_step_with_a_weight_equals_the_estimators_loss_with_that_weight():
    vae = small_vae(SHAPE, hidden=8)
    x = binary(8)
    reference = copy.deepcopy(vae)
    step = make_step(vae, ESTIMATORS.build("stl"))
    pyro.set_rng_seed(4)
    step(x, 0.3)
    pyro.set_rng_seed(4)
    expected = ESTIMATORS.build("stl").loss(reference.model, reference.guide, x, kl_weight=0.3) / len(x)
    assert step.last_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_stl_own_elbo_equals_pyros_trace_elbo_on_the_path_derivative_guide():
    vae = small_vae(SHAPE, hidden=8, prior={"name": "mog", "components": 2})
    x = binary(8)

    def loss_and_grads(compute):
        model = copy.deepcopy(vae)
        pyro.set_rng_seed(9)
        loss = compute(model)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        return loss.detach(), grads

    ours, our_grads = loss_and_grads(lambda m: ESTIMATORS.build("stl").loss(m.model, m.guide, x, kl_weight=0.5))

    def pyro_stl(m):
        model, guide = pyro_vae_scaled(m.model, 0.5), pyro_vae_scaled(RewrapLatents(PathDerivative)(m.guide), 0.5)
        return Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)

    reference, reference_grads = loss_and_grads(pyro_stl)
    assert torch.allclose(ours, reference, rtol=1e-5)
    for a, b in zip(our_grads, reference_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_stl_with_labels_equals_pyros_trace_elbo_on_the_path_derivative_guide():
    """stl passes a conditional model's labels to its programs, as Pyro's ELBOs do."""
    from pyro_vae.models import CVAE

    cvae = CVAE(SHAPE, latent_dim=3, num_classes=3, encoder={"name": "mlp", "hidden": [8]},
                decoder={"name": "mlp", "hidden": [8]})
    x, y = binary(6), torch.tensor([0, 1, 2, 2, 1, 0])

    def loss_and_grads(compute):
        model = copy.deepcopy(cvae)
        pyro.set_rng_seed(9)
        loss = compute(model)
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    ours, our_grads = loss_and_grads(lambda m: ESTIMATORS.build("stl").loss(m.model, m.guide, x, kl_weight=0.5, y=y))
    reference, reference_grads = loss_and_grads(lambda m: Trace_ELBO(max_plate_nesting=1).differentiable_loss(
        pyro_vae_scaled(m.model, 0.5), pyro_vae_scaled(RewrapLatents(PathDerivative)(m.guide), 0.5), x, y))
    assert torch.allclose(ours, reference, rtol=1e-5)
    for a, b in zip(our_grads, reference_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def pyro_vae_scaled(fn, weight):
    from pyro_vae import kl_scaled

    return kl_scaled(fn, weight)


@pytest.mark.trains
def test_cuda_graph_true_without_a_gpu_is_a_one_line_error_and_auto_trains_eagerly(tmp_path):
    config = tiny_config(train={"cuda_graph": True, "epochs": 1})
    with pytest.raises(UserError, match=r"train.cuda_graph = true is not possible: the training device is cpu"):
        train(config, out=tmp_path / "graph")
    assert not (tmp_path / "graph").exists()
    run = train(tiny_config(train={"cuda_graph": "auto", "epochs": 1}), out=tmp_path / "auto")
    assert (run / "checkpoint.pt").exists()
    with pytest.raises(UserError, match=r'train.cuda_graph must be "auto", true or false'):
        train(tiny_config(train={"cuda_graph": "yes"}), out=tmp_path / "bad")


@pytest.mark.parametrize("penalty", ["capacity", "free_bits"])
@pytest.mark.parametrize("name", ESTIMATORS.names(supports_kl_penalty=True, capturable=True))
@pytest.mark.trains
def test_a_penalized_step_reads_nothing_from_the_device_either(monkeypatch, penalty, name):
    from pyro_vae.penalties import Capacity, FreeBits

    vae = small_vae(SHAPE, hidden=8)
    step = make_step(vae, ESTIMATORS.build(name))
    kl_penalty = Capacity(gamma=10.0, capacity=2.0) if penalty == "capacity" else FreeBits(0.5)
    with pyro.validation_enabled(False), no_reads_from_tensors(monkeypatch):
        step(binary(8), 1.0, kl_penalty)
    assert step.faults()[0] == 0


# ---- a capture that fails: undone exactly, then eager ("auto") or a one-line stop (true) ----

CAPTURE_ERROR = "operation not permitted when stream is capturing"


@pytest.fixture
def failing_capture(monkeypatch):
    """A stand-in on CPU for torch.cuda's streams and graphs, and for a capture that fails.

    ``fail(stage)`` arms it: "warm-up" raises at the end of the second warm-up step, "capture"
    at the end of the capture, "first replay" at the first replay. The fakes run the step's body
    eagerly (where CUDA would only record it), so the failed attempt has changed parameters,
    optimizer state, counters and RNG by the time it raises: the restore must undo all of it.
    Every run is allowed to capture (``capture_obstacle`` is None)."""
    import pyro_vae.build

    armed = {"stage": None, "warm_ups": 0}

    class Stream:
        def wait_stream(self, other):
            pass

        def synchronize(self):
            pass

    @contextlib.contextmanager
    def stream(side):
        yield
        armed["warm_ups"] += 1
        if armed["stage"] == "warm-up" and armed["warm_ups"] == 2:
            raise RuntimeError(f"CUDA error: {CAPTURE_ERROR}")

    class Graph:
        def replay(self):
            if armed["stage"] == "first replay":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            raise AssertionError("a stand-in graph cannot replay")

    @contextlib.contextmanager
    def graph(g):
        yield
        if armed["stage"] == "capture":
            raise RuntimeError(f"CUDA error: {CAPTURE_ERROR}")

    for name, value in (("Stream", Stream), ("current_stream", Stream), ("set_stream", lambda s: None),
                        ("stream", stream), ("CUDAGraph", Graph), ("graph", graph)):
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(pyro_vae.build, "capture_obstacle", lambda *args: None)
    return lambda stage: armed.update(stage=stage)


def parameters_of(run):
    from pyro_vae import load_run

    return [p.detach() for p in load_run(run).parameters()]


@pytest.mark.parametrize("stage", ["warm-up", "capture", "first replay"])
@pytest.mark.trains
def test_a_failed_capture_under_auto_warns_once_and_trains_exactly_as_eager(tmp_path, capsys, failing_capture, stage):
    from pyro_vae.runs import read_metrics
    from pyro_vae.steps import CapturedStep

    failing_capture(stage)
    made = []
    original = CapturedStep.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CapturedStep, "__init__", spy)
        auto = train(tiny_config(train={"cuda_graph": "auto"}), out=tmp_path / "auto")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cuda_graph" in line]
    assert len(made) == 1  # the run did take the captured step
    reason = "an illegal memory access was encountered" if stage == "first replay" else CAPTURE_ERROR
    assert warnings == [f'warning: train.cuda_graph = "auto": the captured step failed at its {stage} (RuntimeError: '
                        f"CUDA error: {reason}); training goes on eagerly from the state before it"]
    eager = train(tiny_config(train={"cuda_graph": False}), out=tmp_path / "eager")
    assert all(torch.equal(a, b) for a, b in zip(parameters_of(auto), parameters_of(eager), strict=True))
    drop_time = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert drop_time(read_metrics(auto / "metrics.csv")) == drop_time(read_metrics(eager / "metrics.csv"))  # train loss too


@pytest.mark.trains
def test_a_failed_capture_under_true_stops_with_one_line_and_the_checkpoint_intact(tmp_path, capsys, failing_capture):
    from pyro_vae.cli import main
    from pyro_vae.runs import read_metrics
    from pyro_vae.steps import CapturedStep

    run = train(tiny_config(train={"epochs": 1}), out=tmp_path / "run")
    checkpoint = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    failing_capture("capture")
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "train.cuda_graph=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.cuda_graph = true: the captured step failed at its capture "
                                               f"(RuntimeError: CUDA error: {CAPTURE_ERROR})")
    capture_step = int(read_metrics(run / "metrics.csv")[-1]["step"]) + CapturedStep.warmup_steps + 1  # after 3 warm-ups
    assert err[0].endswith(f") at step {capture_step}; the last good checkpoint in {run} is intact; "
                           'resume with --set train.cuda_graph=false (or "auto") to train eagerly')
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    # and the run goes on from it: eagerly, to the parameters of a run that never tried
    train(None, resume=run, overrides=["train.epochs=2", "train.cuda_graph=false"])
    straight = train(tiny_config(), out=tmp_path / "straight")
    assert all(torch.equal(a, b) for a, b in zip(parameters_of(run), parameters_of(straight), strict=True))


@pytest.mark.trains
def test_a_failed_capture_whose_state_cannot_be_restored_stops_with_one_line_even_under_auto(tmp_path, monkeypatch,
                                                                                           failing_capture):
    import pyro_vae.steps

    def sticky(state):  # e.g. a CUDA error that stays set: the state cannot come back
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    failing_capture("capture")
    monkeypatch.setattr(pyro_vae.steps, "set_rng_state", sticky)
    with pytest.raises(UserError) as stop:
        train(tiny_config(train={"cuda_graph": "auto", "epochs": 1}), out=tmp_path / "run")
    assert str(stop.value) == (
        f'train.cuda_graph = "auto": the captured step failed at its capture (RuntimeError: CUDA error: {CAPTURE_ERROR}), '
        "and the state before it could not be restored (RuntimeError: CUDA error: an illegal memory access was "
        f"encountered) at step 4; no checkpoint was written yet (the fault came before the first one), so "
        f"{tmp_path / 'run'} holds none to resume; "
        'resume with --set train.cuda_graph=false (or "auto") to train eagerly')
