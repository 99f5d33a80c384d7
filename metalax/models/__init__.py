"""Models as ``apply_fn(params, x)``: built-in linen modules and adapters."""

from metalax.models.adapters import from_function
from metalax.models.adapters import from_linen
from metalax.models.adapters import from_nnx
from metalax.models.autoencoder import Autoencoder
from metalax.models.autoencoder import Decoder
from metalax.models.autoencoder import autoencoder_loss
from metalax.models.conv import Conv4
from metalax.models.mlp import MLP
from metalax.models.resnet import ResNet12

__all__ = (
    "Autoencoder",
    "Conv4",
    "Decoder",
    "MLP",
    "ResNet12",
    "autoencoder_loss",
    "from_function",
    "from_linen",
    "from_nnx",
)
