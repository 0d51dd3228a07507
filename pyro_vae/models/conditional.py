"""The conditional VAE (`[model] kind = "cvae"`): y a class label, always observed:

```
z ~ p(z)                               site "z"
x ~ p(x | decoder(z, y))               site "x" (observed)
guide: z ~ N(loc(x, y), scale(x, y)^2) site "z"
```

Networks see y one-hot (`labeled`); the ELBO is conditional on y, log p(x | y) >= E_q[log p(x | z, y)]
- KL(q(z | x, y) || p(z)).
"""

from __future__ import annotations

import pyro
import torch
from pyro.nn import pyro_method

from .labeled import LabeledVAE
from .vae import MODEL_KINDS


@MODEL_KINDS.register("cvae")
class CVAE(LabeledVAE):
    """Conditional VAE: p(x | z, y) and q(z | x, y), y a class label, always observed."""

    @pyro_method
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z) p(x | z, y) for a minibatch x `(N, *data_shape)` and its labels y `(N,)`."""
        x = self._check_batch(x)
        y = self._check_labels(y, x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist())
            pyro.sample("x", self.likelihood_dist(z, y, x), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z | x, y), reparameterized."""
        x = self._check_batch(x)
        y = self._check_labels(y, x)
        with self.param_store(), pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.guide_dist(x, y))

