"""The Gaussian-mixture VAE and its three estimators for the discrete latent y, against hand-written
sums, limits and Monte Carlo; clustering accuracy on constructed assignments; the CLI on a gmvae run."""

import json
import math

import pytest
import torch
from conftest import one_line_error, tiny_config

from pyro_vae import train
from pyro_vae.cli import main
from pyro_vae.evaluation import (
    clustering_accuracy,
    clustering_metrics,
    evaluate,
    gradient_variance,
    kmeans_clusters,
    nmi,
    prior_responsibility_clusters,
)
from pyro_vae.models import GMVAE, VAE
from pyro_vae.models.gmvae import FEATURES
from pyro_vae.objectives import ESTIMATORS
from pyro_vae.registry import UserError

K, D = 3, 6


def tiny_gmvae(component_prior="learned"):
    torch.manual_seed(0)
    model = GMVAE((D,), latent_dim=2, encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]},
                  components=K, component_prior=component_prior)
    with torch.no_grad():
        if component_prior == "learned":
            model.component_logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
        model.classifier.weight.mul_(5.0)  # q(y | x) far from uniform, so the terms weigh differently
    return model


def estimator(spec, **options):
    return ESTIMATORS.build(spec, "objective.estimator", num_particles=1, vectorize_particles=False, jit=False,
                            data_shape=(D,), **options)


X = (torch.rand(5, D, generator=torch.Generator().manual_seed(1)) > 0.5).float()


def hand_written_terms(model, x, y, z):
    """log p(x | z) + log p(z | y) - log q(z | x, y) + log pi_y - log q(y | x) for one-hot y, per data point."""
    h = model.features(x)
    log_q_y = torch.log_softmax(model.classifier(h), -1)
    log_pi = torch.log_softmax(model.component_logits, -1)
    return (model.likelihood_dist(z, x).log_prob(x) + model.component_dist(y).log_prob(z)
            - model.guide_dist(x, y, h).log_prob(z) + (y * log_pi).sum(-1) - (y * log_q_y).sum(-1))


def test_enumerated_loss_is_the_hand_written_sum_over_y():
    model = tiny_gmvae()
    torch.manual_seed(3)
    loss = estimator("enum").loss(model.model, model.guide, X)
    torch.manual_seed(3)  # the same draw of z for each y, shape (K, N, d), as TraceEnum_ELBO takes it
    every = torch.eye(K).unsqueeze(1)
    z = model.guide_dist(X, every).rsample()
    q_y = model.classifier_dist(X).probs
    total = sum((q_y[:, k] * hand_written_terms(model, X, torch.eye(K)[k], z[k])).sum() for k in range(K))
    assert loss.item() == pytest.approx(-total.item(), rel=1e-5)
    # and it is not the loss of y drawn once: the sum over y is what makes it exact
    torch.manual_seed(3)
    assert estimator("score").loss(model.model, model.guide, X).item() != pytest.approx(loss.item(), rel=1e-3)


def test_exact_elbo_is_the_mean_of_the_enumerated_estimate():
    """`elbo_terms` (closed-form KL of z) and TraceEnum_ELBO's Monte Carlo estimate agree on average."""
    model = tiny_gmvae()
    exact = model.elbo_terms(X)["elbo"].sum().item()
    enum = estimator("enum")
    with torch.no_grad():
        draws = torch.tensor([-enum.loss(model.model, model.guide, X).item() for _ in range(200)])
    assert abs(draws.mean().item() - exact) < 4 * draws.std().item() / math.sqrt(len(draws))


def relaxed_loss(model, temperature, straight_through=False, seed=5):
    torch.manual_seed(seed)
    return estimator({"name": "relaxed", "temperature": temperature, "straight_through": straight_through}).loss(
        model.model, model.guide, X)


def hard_sample_loss(model, seed=5):
    """-[log p(x | z) + log p(z | y) - log q(z | x, y) + log pi_y - log q(y | x)] for y the Gumbel-max
    sample of q(y | x) drawn with the same noise as the relaxed guide's."""
    torch.manual_seed(seed)
    logits = torch.log_softmax(model.classifier(model.features(X)), -1)
    uniform = torch.rand(logits.shape).clamp(torch.finfo(logits.dtype).tiny, 1 - 1e-7)
    y = torch.nn.functional.one_hot((logits - torch.log(-torch.log(uniform))).argmax(-1), K).float()
    z = model.guide_dist(X, y).rsample()
    return -hand_written_terms(model, X, y, z).sum()


def test_relaxed_objective_approaches_the_hard_sample_objective_as_the_temperature_falls():
    model = tiny_gmvae()
    hard = hard_sample_loss(model).item()
    gaps = [abs(relaxed_loss(model, t).item() - hard) for t in (1.0, 0.1, 1e-3)]
    assert gaps[0] > 0.05  # a relaxed bound, not the hard one, at temperature 1
    assert gaps[2] < 1e-3 and gaps[2] < gaps[0]
    # straight-through: the hard sample's objective at any temperature, the relaxed gradient
    assert relaxed_loss(model, 1.0, straight_through=True).item() == pytest.approx(hard, abs=1e-4)


def test_score_function_gradient_matches_the_enumerated_gradient_in_expectation():
    """q(y | x)'s parameters: the score estimate's mean is the exact (enumerated) gradient's, within
    Monte Carlo error, and its variance is far larger."""
    model = tiny_gmvae()
    score = gradient_variance(model, estimator("score"), X, num_draws=800, params="classifier", seed=1)
    enum = gradient_variance(model, estimator("enum"), X, num_draws=80, params="classifier", seed=2)
    standard_error = (score["variance"] / 800 + enum["variance"] / 80).sqrt()
    z = (score["mean"] - enum["mean"]).abs() / standard_error
    assert z.max().item() < 4.5, z
    assert enum["mean"].norm() > 0.05  # a gradient to match, not zero against zero
    assert score["trace_covariance"] > 10 * enum["trace_covariance"]


def test_clustering_accuracy_on_constructed_assignments():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert clustering_accuracy(torch.tensor([2, 2, 0, 0, 1, 1, 1]), labels) == 1.0  # a permutation
    assert nmi(torch.tensor([2, 2, 0, 0, 1, 1, 1]), labels) == pytest.approx(1.0)
    # More clusters than classes: the unmatched cluster's points are errors.
    assert clustering_accuracy(torch.tensor([0, 0, 1, 1, 2, 2, 3]), labels) == pytest.approx(6 / 7)
    # Contingency: cluster 0 holds 3 of class 0 and 2 of class 1, cluster 1 holds 2 of class 0. Greedy
    # matching (cluster 0 first, to its largest class 0; cluster 1 then to class 1) scores 3/7; the best
    # matching, 0 -> class 1 and 1 -> class 0, scores 4/7.
    clusters = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    classes = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    assert clustering_accuracy(clusters, classes) == pytest.approx(4 / 7)
    metrics = clustering_metrics(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]), num_clusters=3)
    assert metrics["cluster_sizes"] == [0, 3, 0] and metrics["clustering_accuracy"] == 1.0
    with pytest.raises(UserError, match="labels"):
        clustering_accuracy(torch.tensor([0, 1]), torch.tensor([0]))


def test_kmeans_and_a_mixture_priors_responsibilities_cluster():
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    points = torch.cat([centres[0] + torch.randn(20, 2), centres[1] + torch.randn(20, 2)])
    labels = torch.tensor([0] * 20 + [1] * 20)
    assert clustering_accuracy(kmeans_clusters(points, 2), labels) == 1.0
    vae = VAE(2, latent_dim=2, prior={"name": "mog", "components": 2})
    assert len(prior_responsibility_clusters(vae, points)) == 40
    with pytest.raises(UserError, match="mog"):
        prior_responsibility_clusters(VAE(2, latent_dim=2), points)


@pytest.mark.parametrize("name", ["trace", "stl", "iwae", "tcvae"])
def test_estimators_that_cannot_train_y_are_refused_in_one_line(name, tmp_path):
    config = tiny_config(model={"kind": "gmvae", "components": 3}, objective={"estimator": name})
    with pytest.raises(UserError, match="discrete latent y.*enum"):
        train(config, out=tmp_path / "run")


def test_relaxed_needs_a_discrete_latent_and_gmvae_options_their_kind(tmp_path):
    with pytest.raises(UserError, match="relaxes a discrete latent.*gmvae"):
        train(tiny_config(objective={"estimator": "relaxed"}), out=tmp_path / "a")
    with pytest.raises(UserError, match="model.components"):
        train(tiny_config(model={"components": 4}), out=tmp_path / "b")
    with pytest.raises(UserError, match="temperature must be > 0"):
        estimator({"name": "relaxed", "temperature": 0})


def test_relaxed_temperature_follows_its_schedule_by_step():
    relaxed = estimator({"name": "relaxed", "temperature": {"name": "linear", "start": 1.0, "end": 0.5, "epochs": 2}})
    relaxed.set_steps_per_epoch(5)
    model = tiny_gmvae()
    seen = []
    for _ in range(12):
        seen.append(relaxed.temperature())
        relaxed.loss(model.model, model.guide, X).backward()
    assert seen[0] == 1.0 and seen[5] == pytest.approx(0.75) and seen[-1] == 0.5
    assert int(relaxed.state_dict()["steps"]) == 12  # checkpointed: a resumed run resumes the schedule


@pytest.mark.trains
@pytest.mark.parametrize("spec", ["enum", {"name": "relaxed", "temperature": 0.5},
                                  {"name": "score", "baseline": "decaying_average"}])
def test_gmvae_trains_evaluates_samples_and_resumes_through_the_cli(spec, tmp_path, capsys):
    config = tiny_config(model={"kind": "gmvae", "components": 4, "component_prior": "learned"},
                         objective={"estimator": spec}, train={"epochs": 1})
    run = train(config, out=tmp_path / "run")
    assert (run / "samples.png").is_file()
    assert main(["evaluate", str(run), "--samples", "4", "--limit", "50"]) == 0
    record = json.loads((run / "evaluation.json").read_text())
    clustering = record["clustering"]
    assert 0 < clustering["clustering_accuracy"] <= 1 and len(clustering["cluster_sizes"]) == 4
    assert sum(clustering["cluster_sizes"]) == 50 and record["log_likelihood"] >= record["elbo"] - 5
    assert main(["sample", str(run), "--n", "4", "--component", "2", "--out", str(tmp_path / "c.png")]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--component", "9", "--out", str(tmp_path / "d.png")]) == 2
    assert "--component must be an integer in 0..3" in one_line_error(capsys)
    assert main(["plot", str(run), "--limit", "50"]) == 0
    assert (run / "components.png").is_file()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # header and two epochs


def test_evaluate_reports_the_exact_elbo_for_every_estimator():
    model = tiny_gmvae()
    result = evaluate(model, X, num_samples=200)
    exact = model.elbo_terms(X)["elbo"].mean().item()
    assert result["elbo"] == pytest.approx(exact, abs=0.5)  # one draw of z per y, at the evaluation seed
    assert result["log_likelihood"] > result["elbo"] - 0.5


def test_direct_enumerated_loss_is_trace_enums_value_and_gradient():
    """The enum estimator's direct path for the gmvae (`enumerated_loss`) against TraceEnum_ELBO itself."""
    from pyro.infer import TraceEnum_ELBO

    model = tiny_gmvae()
    torch.manual_seed(4)
    direct = estimator("enum").loss(model.model, model.guide, X)
    direct_grads = torch.autograd.grad(direct, list(model.parameters()))
    torch.manual_seed(4)
    traced = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, X)
    traced_grads = torch.autograd.grad(traced, list(model.parameters()))
    assert direct.item() == pytest.approx(traced.item(), rel=1e-6)
    for a, b in zip(direct_grads, traced_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # under a KL weight it is TraceEnum_ELBO on the weighted programs
    torch.manual_seed(4)
    weighted = estimator("enum").loss(model.model, model.guide, X, kl_weight=0.5)
    assert weighted.item() != pytest.approx(direct.item(), rel=1e-3)


def test_gradient_variance_of_q_y_needs_a_model_with_q_y():
    with pytest.raises(UserError, match="q\\(y \\| x\\)'s parameters"):
        gradient_variance(VAE(D, latent_dim=2), estimator("trace"), X, num_draws=2, params="classifier")
    result = gradient_variance(tiny_gmvae(), estimator("enum"), X, num_draws=3, params="classifier")
    assert result["num_parameters"] == FEATURES * K + K  # the linear layer of q(y | x): weights and biases


def test_score_on_the_gmvae_is_trace_elbos_estimator_for_y():
    """Without a baseline, `score` on a discrete latent is Pyro's `Trace_ELBO` surrogate (score function
    for the non-reparameterized y, pathwise z): the same value and gradients for the same draws."""
    from pyro.infer import Trace_ELBO

    model = tiny_gmvae()
    parameters = list(model.parameters())
    torch.manual_seed(6)
    ours = estimator("score").loss(model.model, model.guide, X)
    ours_grads = torch.autograd.grad(ours, parameters)
    torch.manual_seed(6)
    with pytest.warns(UserWarning, match="TraceEnum_ELBO instead"):  # Pyro's note on y's enumeration mark
        pyros = Trace_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, X)
    pyros_grads = torch.autograd.grad(pyros, parameters)
    assert ours.item() == pytest.approx(pyros.item(), rel=1e-6)
    for a, b in zip(ours_grads, pyros_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_config_that_names_no_estimator_gets_the_model_kinds_own():
    from pyro_vae.config import check_config

    assert check_config({"model": {"kind": "gmvae"}})["objective"]["estimator"] == "enum"
    assert check_config({})["objective"]["estimator"] == "trace"
    named = {"model": {"kind": "gmvae"}, "objective": {"estimator": "score"}}
    assert check_config(named)["objective"]["estimator"] == "score"
