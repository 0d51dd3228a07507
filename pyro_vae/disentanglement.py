"""Disentanglement metrics: how well each latent dimension captures one known factor of variation.

Every metric compares *codes* (N, D) - a representation of N examples, usually the means of
q(z | x) - with the examples' known *factors* (N, K) (`Split.factors`, e.g. dSprites' shape,
scale, orientation, x, y). Higher is more disentangled for all of them.

- `mig` - Mutual Information Gap (Chen et al. 2018);
- `dci` - Disentanglement, Completeness, Informativeness (Eastwood & Williams 2018);
- `factor_vae_score` - the FactorVAE score (Kim & Mnih 2018), which needs examples drawn
  with one factor held fixed (a renderer, or a full grid of examples);
- `gaussian_total_correlation` and `total_correlation` - the total correlation of the
  codes, KL(q(z) || prod_j q(z_j)), where 0 means independent dimensions.

Discretization (MIG): a factor with at most `max_classes` distinct values is a discrete variable
with those values as its classes (every dSprites factor); one with more, and every code
dimension, is cut into `bins` equal-width bins over its range, as in disentanglement_lib
(Locatello et al. 2019). Logarithms are natural (nats).
"""

import math

import numpy as np
import torch

from .registry import UserError

MAX_CLASSES = 64
BINS = 20


def _numpy(a, what):
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise UserError(f"{what} must be an (N, D) array, got shape {a.shape}")
    return a.astype(np.float64)


def _pair(codes, factors):
    codes, factors = _numpy(codes, "codes"), _numpy(factors, "factors")
    if len(codes) != len(factors):
        raise UserError(f"{len(codes)} codes but {len(factors)} rows of factors")
    if len(codes) < 2:
        raise UserError("the metrics need at least 2 examples")
    return codes, factors


def discretize(column, bins=BINS, max_classes=MAX_CLASSES):
    """Integer classes 0..C-1 of one variable: its distinct values where there are at most
    `max_classes` of them, else `bins` equal-width bins over its range."""
    values, classes = np.unique(column, return_inverse=True)
    if len(values) <= max_classes:
        return classes.reshape(-1)
    edges = np.linspace(column.min(), column.max(), bins + 1)[1:-1]
    return np.digitize(column, edges)


def _histogram_codes(column, bins=BINS):
    """A code dimension cut into `bins` equal-width bins over its range (a constant: one bin)."""
    if column.max() == column.min():
        return np.zeros(len(column), dtype=np.int64)
    edges = np.linspace(column.min(), column.max(), bins + 1)[1:-1]
    return np.digitize(column, edges)


def entropy(classes):
    """H(a) = -sum_a p(a) log p(a) of integer classes, in nats."""
    p = np.bincount(classes) / len(classes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information(a, b):
    """I(a; b) = sum_ab p(a, b) log p(a, b) / (p(a) p(b)) of two integer class arrays, in nats."""
    joint = np.bincount(a * (b.max() + 1) + b, minlength=(a.max() + 1) * (b.max() + 1))
    joint = joint.reshape(a.max() + 1, b.max() + 1) / len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mutual_information_matrix(codes, factors, bins=BINS, max_classes=MAX_CLASSES):
    """I(z_j; v_k) for every code dimension j and factor k, shape (D, K), and H(v_k), shape (K,)."""
    codes, factors = _pair(codes, factors)
    zs = [_histogram_codes(codes[:, j], bins) for j in range(codes.shape[1])]
    vs = [discretize(factors[:, k], bins, max_classes) for k in range(factors.shape[1])]
    info = np.array([[mutual_information(z, v) for v in vs] for z in zs])
    return info, np.array([entropy(v) for v in vs])


def mig(codes, factors, bins=BINS, max_classes=MAX_CLASSES, per_factor=False):
    """Mutual Information Gap (Chen et al. 2018):

        MIG = (1/K) sum_k (1 / H(v_k)) ( I(z_j(k); v_k) - max_{j != j(k)} I(z_j; v_k) ),
        j(k) = argmax_j I(z_j; v_k),

    the gap between the two code dimensions that know most about each factor, as a fraction of
    what there is to know about it (H(v_k)). It is 1 when each factor is captured whole by one
    dimension and by no other; a factor that no dimension captures, or that two capture alike (a
    duplicated code), contributes 0. I(z_j; v_k) is that of the discretized variables
    (`discretize`; Chen et al. estimate it from q(z_j | x) instead, disentanglement_lib
    discretizes as here). Factors with a single value (H = 0) are left out. With
    `per_factor`, also returns each factor's normalized gap.
    """
    info, h = mutual_information_matrix(codes, factors, bins, max_classes)
    keep = h > 0
    if not keep.any():
        raise UserError("every factor is constant: there is nothing to disentangle")
    ordered = np.sort(info[:, keep], axis=0)[::-1]
    second = ordered[1] if len(ordered) > 1 else np.zeros(ordered.shape[1])
    gaps = (ordered[0] - second) / h[keep]
    return (float(gaps.mean()), gaps) if per_factor else float(gaps.mean())


def _standardize(a):
    std = a.std(0)
    return (a - a.mean(0)) / np.where(std > 0, std, 1.0)


MIN_R2 = 0.01
COMPLETENESS = ("weighted", "mean")


def _check_completeness(completeness):
    if completeness not in COMPLETENESS:
        raise UserError(f"dci: unknown completeness {completeness!r}; choose one of: {', '.join(COMPLETENESS)}")


def dci(codes, factors, regressor="lasso", train_fraction=0.8, alpha=0.02, seed=0, max_train=None,
        min_r2=MIN_R2, completeness="weighted"):
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018), a dict.

    A regressor per factor k predicts v_k from the codes, fitted on a seeded `train_fraction`
    of the examples; its importances give R_jk >= 0 (code dimension j for factor k), from which
    `dci_from_importance` computes disentanglement and completeness (disentanglement_lib's
    definitions: both importance-weighted). Informativeness is how well the factors are
    predicted on the held-out examples, averaged over factors. Regressors:

    - `"lasso"` (Eastwood & Williams' linear probe): Lasso with weight `alpha` on the
      standardized codes and factor; R_jk = |w_jk|; informativeness = held-out R^2. Fast. A
      factor the probe does not predict (held-out R^2 below `min_r2`, default 0.01) gets no
      importances: its few nonzero weights are fitted noise (the lasso keeps a code whose
      sample correlation with the factor beats `alpha` by chance), and since D and C read
      only *relative* importances, one such weight of a few thousandths alone would make pure
      noise "perfectly disentangled" (D = C = 1). Nothing predicted at all: D = C = 0.
    - `"gbt"` (disentanglement_lib's): a gradient-boosted tree classifier per (discretized)
      factor, R_jk = its feature importances; informativeness = held-out accuracy. Slower.
      Its importances sum to 1 per factor whatever it learned (spread over every code on noise,
      which scores D and C near 0), and no factor is left out.

    The result also holds `importance`, the matrix R that D and C were computed from.
    """
    codes, factors = _pair(codes, factors)
    _check_completeness(completeness)
    order = np.random.RandomState(seed).permutation(len(codes))
    cut = max(1, min(round(train_fraction * len(codes)), len(codes) - 1))
    train, test = order[:cut], order[cut:]
    if max_train is not None:
        train = train[:max_train]
    keep = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]
    if not keep:
        raise UserError("every factor is constant: there is nothing to disentangle")
    importance, scores = np.zeros((codes.shape[1], len(keep))), []
    if regressor == "lasso":
        from sklearn.linear_model import Lasso

        z, v = _standardize(codes), _standardize(factors[:, keep])
        for i in range(len(keep)):
            model = Lasso(alpha=alpha).fit(z[train], v[train, i])
            scores.append(model.score(z[test], v[test, i]))
            if scores[-1] >= min_r2:
                importance[:, i] = np.abs(model.coef_)
    elif regressor == "gbt":
        from sklearn.ensemble import GradientBoostingClassifier

        for i, k in enumerate(keep):
            classes = discretize(factors[:, k])
            model = GradientBoostingClassifier(random_state=seed).fit(codes[train], classes[train])
            importance[:, i] = model.feature_importances_
            scores.append(model.score(codes[test], classes[test]))
    else:
        raise UserError(f"dci: unknown regressor {regressor!r}; choose lasso or gbt")
    return {**dci_from_importance(importance, completeness), "informativeness": float(np.mean(scores)),
            "importance": importance}


def _normalized_entropy(p, base):
    """1 - H_base(p) for each row of p (rows sum to 1); a row of zeros (nothing known) gives 0."""
    if base <= 1:
        return np.ones(len(p))
    total = p.sum(1, keepdims=True)
    q = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
    h = -(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)).sum(1) / math.log(base)
    return 1.0 - h


def dci_from_importance(importance, completeness="weighted"):
    """Disentanglement and completeness (Eastwood & Williams 2018) of an importance matrix R (D, K),
    R_jk >= 0 the importance of code dimension j for factor k, as disentanglement_lib computes them
    (Locatello et al. 2019, `evaluation/metrics/dci.py`). With P_jk = R_jk / sum_k' R_jk' (code j's
    importance spread over the factors) and Pt_jk = R_jk / sum_j' R_j'k (factor k's over the codes),

        D_j = 1 - H_K(P_j.),   disentanglement = sum_j rho_j D_j,   rho_j = sum_k R_jk / sum_jk R_jk
        C_k = 1 - H_D(Pt_.k),  completeness    = sum_k pi_k C_k,    pi_k  = sum_j R_jk / sum_jk R_jk

    (H_K: entropy in base K, so each is in [0, 1]): each code's and each factor's score weighted by
    its share of the total importance. `completeness="mean"` gives the unweighted
    (1/K) sum_k C_k instead, which counts a factor no code holds as C_k = 0. A row or column of zeros scores 0; an
    all-zero matrix (nothing predicted) gives D = C = 0.
    """
    _check_completeness(completeness)
    r = np.abs(np.asarray(importance, dtype=np.float64))
    d, k = r.shape
    total = r.sum()
    per_code = _normalized_entropy(r, k)
    per_factor = _normalized_entropy(r.T, d)
    code_weights = r.sum(1) / total if total > 0 else np.zeros(d)
    if completeness == "mean":
        factor_weights = np.full(k, 1.0 / k)
    else:
        factor_weights = r.sum(0) / total if total > 0 else np.zeros(k)
    return {"disentanglement": float((code_weights * per_code).sum()),
            "completeness": float((factor_weights * per_factor).sum())}


@torch.no_grad()
def factor_vae_score(encode, factors, x=None, render=None, batch_size=64, num_train=500, num_eval=300,
                     num_variance_estimate=5000, prune=0.05, seed=0):
    """The FactorVAE score (Kim & Mnih 2018): the accuracy of a majority-vote classifier that
    names the factor held fixed in a batch from the one code dimension that varies least.

    Each vote: draw a factor k and a value v of it; draw `batch_size` examples with v_k = v and
    the other factors at random; encode them, divide each dimension by its standard deviation s_j
    over the data (so that the scale of a dimension does not decide), and take
    d* = argmin_j Var(z_j / s_j) over the active dimensions (s_j^2 >= `prune`: a collapsed
    dimension varies least of all and says nothing). The classifier maps each d to the factor it
    voted for most often, fitted on `num_train` votes; the score is its accuracy on
    `num_eval` new votes (1: every fixed factor is found from its own dimension; 1/K: chance).

    `encode` maps images (a batch as the data hold them) to codes (N, D). `factors` (N, K) is
    a pool of factor combinations (a split's factors): the other factors are drawn as rows of
    it. With `render` (factors -> images: `Data.render`) each batch is drawn afresh with v_k
    set to v; without, it is drawn among the pool's examples `x` with v_k = v (exact on a grid).
    """
    factors = _numpy(factors, "factors")
    if render is None and x is None:
        raise UserError("factor_vae_score needs the examples x of the factors, or a render function")
    if x is not None and len(x) != len(factors):
        raise UserError(f"{len(x)} examples but {len(factors)} rows of factors")
    rng = np.random.RandomState(seed)
    keep = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]
    if not keep:
        raise UserError("every factor is constant: there is nothing to disentangle")

    def images(rows, fixed=None):
        if render is None:
            return x[torch.as_tensor(rows)]
        values = factors[rows].copy()
        if fixed is not None:
            values[:, fixed[0]] = fixed[1]
        return render(values)

    def codes_of(images_):
        z = encode(images_)
        return z.detach().cpu().double().numpy() if torch.is_tensor(z) else np.asarray(z, dtype=np.float64)

    sample = rng.choice(len(factors), min(num_variance_estimate, len(factors)), replace=False)
    scale = codes_of(images(sample)).std(0)
    active = scale ** 2 >= prune
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "active_dims": 0}

    def vote():
        k = keep[rng.randint(len(keep))]
        value = factors[rng.randint(len(factors)), k]
        if render is None:
            pool = np.flatnonzero(factors[:, k] == value)
            z = codes_of(images(rng.choice(pool, batch_size)))
        else:
            z = codes_of(images(rng.randint(len(factors), size=batch_size), (k, value)))
        variance = (z[:, active] / scale[active]).var(0)
        return int(np.argmin(variance)), keep.index(k)

    def votes(n):
        table = np.zeros((int(active.sum()), len(keep)), dtype=np.int64)
        for _ in range(n):
            d, k = vote()
            table[d, k] += 1
        return table

    train, held_out = votes(num_train), votes(num_eval)
    classifier = train.argmax(1)  # each dimension's factor; ties to the first
    accuracy = lambda table: float(table[np.arange(len(table)), classifier].sum() / max(table.sum(), 1))
    return {"train_accuracy": accuracy(train), "eval_accuracy": accuracy(held_out), "active_dims": int(active.sum())}


def gaussian_total_correlation(codes):
    """The total correlation of a Gaussian fitted to the codes, in closed form:

        TC = KL(N(mu, Sigma) || prod_j N(mu_j, Sigma_jj)) = 1/2 (sum_j log Sigma_jj - log det Sigma)

    (0 exactly when Sigma is diagonal). Dimensions with zero variance are left out.
    """
    codes = _numpy(codes, "codes")
    sigma = np.cov(codes, rowvar=False).reshape(codes.shape[1], codes.shape[1])
    keep = np.diag(sigma) > 0
    sigma = sigma[np.ix_(keep, keep)]
    sign, logdet = np.linalg.slogdet(sigma)
    return float(0.5 * (np.log(np.diag(sigma)).sum() - logdet)) if sign > 0 else math.inf


@torch.no_grad()
def total_correlation(loc, scale, num_samples=1000, seed=0):
    """The total correlation of the aggregate posterior q(z) = (1/N) sum_n N(z; loc_n, diag scale_n^2)
    (the codes of N examples under a diagonal Gaussian encoder), Monte Carlo over z only:

        TC = E_q(z) [ log q(z) - sum_j log q(z_j) ],  q(z_j) = (1/N) sum_n N(z_j; loc_nj, scale_nj^2),

    with z drawn from q(z) (`num_samples` of them) and both densities summed exactly over the N
    examples (an (S, N, D) array: keep N * S * D to a few tens of millions). Training estimates
    the same quantity on a minibatch (`objectives.total_correlation.minibatch_log_densities`).
    """
    loc, scale = torch.as_tensor(loc, dtype=torch.float64), torch.as_tensor(scale, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    n = len(loc)
    rows = torch.randint(n, (num_samples,), generator=generator)
    z = loc[rows] + scale[rows] * torch.randn(num_samples, loc.shape[1], generator=generator, dtype=torch.float64)
    total_joint, total_marginal = 0.0, 0.0
    chunk = max(1, 2_000_000 // max(n * loc.shape[1], 1))  # (chunk, N, D) float64: about 16 MB
    for start in range(0, num_samples, chunk):
        zs = z[start : start + chunk, None, :]
        log_q = torch.distributions.Normal(loc[None], scale[None]).log_prob(zs)  # (S, N, D)
        total_joint += (torch.logsumexp(log_q.sum(2), 1) - math.log(n)).sum().item()
        total_marginal += (torch.logsumexp(log_q, 1) - math.log(n)).sum().item()
    return (total_joint - total_marginal) / num_samples


def _encode(vae, x, batch_size=1000):
    """The means of q(z | x) (`vae.encode`) for a tensor of examples, in batches, on the VAE's device."""
    parameter = next(vae.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.cat([vae.encode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate_disentanglement(vae, data, splits=("train", "valid", "test"), limit=None, seed=0,
                             dci_regressor="lasso", factor_vae_votes=(500, 300)):
    """Every metric of this module for a trained VAE on data with factors (`data.has_factors`).

    The codes are the means of q(z | x) on the examples of `splits` together (by default the
    whole data set: on dSprites the whole grid; `limit` draws that many at random with
    `seed`). Returns a dict: `mig` (and `mig_per_factor` by name), `dci` (disentanglement,
    completeness, informativeness), `factor_vae_score` (its held-out accuracy; the examples are
    drawn with `data.render` where the data can draw them, else among these examples),
    `gaussian_total_correlation` of the codes, `total_correlation` of the aggregate
    posterior (diagonal Gaussian guides), `num_examples` and `factor_names`.
    """
    from .data import Split

    if not data.has_factors:
        raise UserError("the disentanglement metrics need data whose splits carry factors (dsprites, or "
                        "an .npz with '<split>_factors')")
    parts = [data.split(name) for name in splits]
    pool = Split(torch.cat([p.x for p in parts]).cpu(), None, torch.cat([p.factors for p in parts]).cpu())
    pool = pool.random_subset(limit, seed)
    was_training = vae.training
    vae.eval()
    try:
        codes = _encode(vae, pool.x)
        assert pool.factors is not None  # the pool was built with factors, and a subset keeps them
        factors = pool.factors.numpy()
        mig_value, gaps = mig(codes, factors, per_factor=True)
        informative = [name for name, column in zip(data.factor_names, factors.T) if len(np.unique(column)) > 1]
        dci_result = dci(codes, factors, regressor=dci_regressor, seed=seed)
        dci_result.pop("importance")
        score = factor_vae_score(lambda images: _encode(vae, images), factors, pool.x, data.render,
                                 num_train=factor_vae_votes[0], num_eval=factor_vae_votes[1], seed=seed)
        result = {
            "mig": mig_value,
            "mig_per_factor": dict(zip(informative, map(float, gaps))),
            "dci": dci_result,
            "factor_vae_score": score["eval_accuracy"],
            "factor_vae_active_dims": score["active_dims"],
            "gaussian_total_correlation": gaussian_total_correlation(codes),
            "num_examples": len(pool),
            "factor_names": list(data.factor_names),
        }
        guide = vae.guide_dist(pool.x[:1].to(next(vae.parameters()).device))
        base = getattr(guide, "base_dist", None)
        if isinstance(base, torch.distributions.Normal):
            locs, scales = [], []
            for i in range(0, len(pool), 1000):
                q = vae.guide_dist(pool.x[i : i + 1000].to(base.loc.device)).base_dist
                locs.append(q.loc.cpu())
                scales.append(q.scale.cpu())
            result["total_correlation"] = total_correlation(torch.cat(locs), torch.cat(scales), seed=seed)
        return result
    finally:
        vae.train(was_training)
