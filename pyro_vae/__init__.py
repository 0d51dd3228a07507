"""pyro_vae: variational autoencoders as Pyro programs.

    from pyro_vae import VAE, train, load_run, kl_scaled
"""

from .annealing import kl_scaled
from .model import VAE
from .registry import UserError
from .runs import load_run
from .training import train

__all__ = ["VAE", "kl_scaled", "load_run", "train", "UserError"]
__version__ = "0.1.0"
