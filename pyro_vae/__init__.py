"""pyro_vae: variational autoencoders as Pyro programs.

    from pyro_vae import VAE, CVAE, M2, GMVAE, train, load_run, kl_scaled, sweep

The names are imported on first use (PEP 562), so that `import pyro_vae` (and
`pyro-vae --help`) does not pay for torch and Pyro until they are needed.
"""

import importlib
from typing import TYPE_CHECKING

from .registry import UserError

if TYPE_CHECKING:  # what the lazy names are, for type checkers; at run time they load on first use
    from .annealing import kl_scaled
    from .models import CVAE, GMVAE, M2, VAE
    from .runs import load_run
    from .sweeps import sweep
    from .training import train

_LAZY = {"VAE": ".models", "CVAE": ".models", "M2": ".models", "GMVAE": ".models", "kl_scaled": ".annealing",
         "load_run": ".runs", "train": ".training", "sweep": ".sweeps"}

__all__ = ["VAE", "CVAE", "M2", "GMVAE", "kl_scaled", "load_run", "train", "sweep", "UserError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
