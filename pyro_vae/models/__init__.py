"""The model kinds, one module each; importing the package registers them all in `MODEL_KINDS`.

- `vae`: the VAE, whose class is the interface every model kind implements, and the registry
  `MODEL_KINDS` (kind "vae");
- `hierarchical`: the VAE with two latent layers (kind "vae" with `model.latent_dim = [z1, z2]`);
- `labeled`: `LabeledVAE`, the base of the models with labels, and its networks that see y one-hot;
- `conditional`: the conditional VAE (kind "cvae");
- `m2`: Kingma et al.'s semi-supervised M2 (kind "m2");
- `gmvae`: the Gaussian-mixture VAE, a discrete latent y (kind "gmvae");
- `m1m2`: M1+M2, M2 on a trained VAE's codes (kind "m2" with `model.features`);
- `classifier`: the classifiers q(y | x) by name (`CLASSIFIERS`) and the supervised baseline `fit_classifier`.

A new kind is one new module: a subclass of `VAE` (or `LabeledVAE`) with one
`@MODEL_KINDS.register("name")` line, imported here (the import order is the listing's).
"""

# The registered kinds in the listing's order ("vae", "cvae", "m2", "gmvae"): the order of these imports.
# isort: off
from .vae import COMPONENTS, LINK_HIDDEN, MODEL_KINDS, VAE, check_prior_fits_guide, is_two_layer, refuse_components
from .conditional import CVAE
from .m2 import M2
from .gmvae import GMVAE
# isort: on
from .classifier import CLASSIFIERS, MLPClassifier, fit_classifier
from .hierarchical import HierarchicalVAE
from .labeled import ConditionalDecoder, ConditionalEncoder, LabeledVAE, one_hot
from .m1m2 import StackedM2

__all__ = [
    "CLASSIFIERS",
    "COMPONENTS",
    "CVAE",
    "GMVAE",
    "LINK_HIDDEN",
    "M2",
    "MODEL_KINDS",
    "ConditionalDecoder",
    "ConditionalEncoder",
    "HierarchicalVAE",
    "LabeledVAE",
    "MLPClassifier",
    "StackedM2",
    "VAE",
    "check_prior_fits_guide",
    "fit_classifier",
    "is_two_layer",
    "one_hot",
    "refuse_components",
]
