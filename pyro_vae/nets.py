"""Encoder and decoder networks.

An encoder maps a batch `x` of shape `(N, *data_shape)` to the guide's parameters,
`(N, num_params)` unconstrained numbers (float32) that the guide family (`guides`)
turns into q(z | x): 2 * latent_dim of them, loc and scale, for the default diagonal Gaussian.
A decoder maps `z` of shape `(*batch, latent_dim)` to the likelihood's parameters,
`(*batch, num_params, *data_shape)`: any leading batch dimensions (Pyro's vectorized
particles add one on the left of the data's).

`mlp` networks take any data shape (they flatten it); `conv` networks take
images `(channels, height, width)`: a strided-convolution encoder and a
transposed-convolution decoder that mirrors it.
"""

import math

from torch import nn

from .checks import sizes
from .registry import Registry, UserError

ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}

def make_activation(name):
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes, activation_name):
    """Linear layers of the given sizes with the activation between them (not after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation_name))
    return nn.Sequential(*layers)


class Net(nn.Module):
    context_arguments = ("data_shape", "latent_dim", "num_params")


@ENCODERS.register("mlp")
class MLPEncoder(Net):
    """Fully connected encoder: flatten, hidden layers, then the guide's parameters."""

    def __init__(self, data_shape, latent_dim, num_params=None, hidden=(256, 256), activation="elu"):
        super().__init__()
        hidden = sizes(hidden, "model.encoder.hidden")
        self.net = mlp([math.prod(data_shape), *hidden, num_params or 2 * latent_dim], activation)

    def forward(self, x):
        return self.net(x.flatten(1)).float()  # float32: see guides.gaussian_parameters


@DECODERS.register("mlp")
class MLPDecoder(Net):
    """Fully connected decoder: z, hidden layers, then the likelihood's parameters.

    With `hidden = []` it is linear, `W z + b`: with a Gaussian likelihood this is
    probabilistic PCA.
    """

    def __init__(self, data_shape, latent_dim, num_params=1, hidden=(256, 256), activation="elu"):
        super().__init__()
        hidden = sizes(hidden, "model.decoder.hidden")
        self.output_shape = (num_params, *data_shape)
        self.net = mlp([latent_dim, *hidden, math.prod(self.output_shape)], activation)

    def forward(self, z):
        return self.net(z).float().view(*z.shape[:-1], *self.output_shape)  # float32: see guides.gaussian_parameters


def _image_shape(data_shape, channels, where):
    if len(data_shape) != 3:
        raise UserError(
            f"{where} 'conv' needs images shaped (channels, height, width), "
            f"but the data has shape {tuple(data_shape)}; use name = \"mlp\""
        )
    factor = 2 ** len(channels)
    _, height, width = data_shape
    if height % factor or width % factor:
        raise UserError(
            f"{where} 'conv' with {len(channels)} stride-2 layers needs height and width "
            f"divisible by {factor}, but the images are {height}x{width}; use fewer channels entries"
        )
    return height // factor, width // factor


@ENCODERS.register("conv")
class ConvEncoder(Net):
    """Convolutional encoder: stride-2 4x4 convolutions halve the image per layer, then a linear map."""

    def __init__(self, data_shape, latent_dim, num_params=None, channels=(32, 64), activation="elu"):
        super().__init__()
        channels = sizes(channels, "model.encoder.channels")
        height, width = _image_shape(data_shape, channels, "encoder")
        layers, c_in = [], data_shape[0]
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), make_activation(activation)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c_in * height * width, num_params or 2 * latent_dim)

    def forward(self, x):
        return self.head(self.features(x)).float()


@DECODERS.register("conv")
class ConvDecoder(Net):
    """Transposed-convolution decoder: a linear map, then stride-2 4x4 transposed convolutions.

    The linear map makes a small feature map; each transposed convolution doubles its
    height and width, back to the image size (it is the adjoint of the encoder's
    stride-2 convolution: its forward pass is that convolution's input gradient)."""

    def __init__(self, data_shape, latent_dim, num_params=1, channels=(64, 32), activation="elu"):
        super().__init__()
        channels = sizes(channels, "model.decoder.channels")
        self.start = (channels[0], *_image_shape(data_shape, channels, "decoder"))
        self.output_shape = (num_params, *data_shape)
        self.head = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), make_activation(activation))
        layers = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), make_activation(activation)]
        layers.append(nn.ConvTranspose2d(channels[-1], num_params * data_shape[0], 4, stride=2, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z):
        h = self.head(z).view(-1, *self.start)  # convolutions take one batch dimension
        return self.features(h).float().view(*z.shape[:-1], *self.output_shape)
