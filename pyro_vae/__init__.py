"""pyro_vae: variational autoencoders as Pyro programs.

    from pyro_vae import VAE, CVAE, M2, train, load_run, kl_scaled
"""

from .annealing import kl_scaled
from .labels import CVAE, M2
from .model import VAE
from .registry import UserError
from .runs import load_run
from .training import train

__all__ = ["VAE", "CVAE", "M2", "kl_scaled", "load_run", "train", "UserError"]
__version__ = "0.1.0"
