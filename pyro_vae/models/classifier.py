"""Classifiers of x, by name (`CLASSIFIERS`: M2's q(y | x), `model.classifier`), and the
supervised baseline M2 is measured against, `fit_classifier`: the same network trained on the
labeled pairs alone."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import sizes
from ..nets import mlp
from ..registry import Registry

CLASSIFIERS = Registry("classifier")


@CLASSIFIERS.register("mlp")
class MLPClassifier(nn.Module):
    """Fully connected classifier: flatten, hidden layers, then the logits of q(y | x)."""

    context_arguments = ("data_shape", "num_classes")

    def __init__(self, data_shape, num_classes, hidden=(256, 256), activation="elu"):
        super().__init__()
        hidden = sizes(hidden, "model.classifier.hidden")
        self.net = mlp([math.prod(data_shape), *hidden, num_classes], activation)

    def forward(self, x):
        return self.net(x.flatten(1)).float()


# ---- the supervised baseline ----


def fit_classifier(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1000, batch_size: int = 100,
                   lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Fit a classifier network to the labeled pairs (x, y) alone: Adam on the mean cross-entropy,
    `steps` minibatches of `batch_size` drawn from a seeded shuffle. The baseline M2 is measured
    against (the same network as its q(y | x), without the unlabeled data). Returns `classifier`."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr)
    classifier.train()
    order, position = torch.randperm(len(x), generator=generator), 0
    for _ in range(steps):
        if position >= len(order):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        loss = F.cross_entropy(classifier(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier.eval()
