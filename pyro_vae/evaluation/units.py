"""Units: whether the data are discrete, bits per dimension, and the offset that turns a density on
dequantized data into a bound on the discrete data's log-probability."""

import math

from pyro import poutine

from ..seeding import seeded_eval


def has_discrete_data(vae, x, y=None):
    """Whether the model's likelihood p(x | z) is a mass function (then bits per dimension apply)."""
    labels = () if y is None else (y[:1],)
    with seeded_eval(vae):  # the trace draws a z; leave the caller's stream be
        trace = poutine.trace(vae.model).get_trace(x[:1], *labels)
    return bool(trace.nodes["x"]["fn"].support.is_discrete)


def bits_per_dim(log_likelihood_nats, num_features):
    """-log p(x) / (D ln 2): the negative log-likelihood in bits per data dimension."""
    return -log_likelihood_nats / (num_features * math.log(2))


def dequantization_offset(num_features, levels):
    """D log L: what turns a density's log p on data dequantized as y = (k + u) / L into a bound on
    the log-probability of the discrete data k (Theis et al. 2016).

    The L^D cubes [k / L, (k + 1) / L)^D tile [0, 1)^D, each of volume L^-D, so
    P(k) = integral over the cube of p(y) dy = L^-D E_u[p((k + u) / L)] >= L^-D exp E_u[log p((k + u) / L)]
    (Jensen), i.e. log P(k) >= E_u[log p((k + u) / L)] - D log L. It is the same units as a
    discretized likelihood's log-mass of k / (L - 1): nats per image of L-level values, and
    -(log p - D log L) / (D ln 2) is bits per dimension in the usual 8-bit sense (L = 256).
    """
    return num_features * math.log(levels)
