"""Models as ``apply_fn(params, x)``: built-in linen modules and adapters."""

from metalax.models.adapters import from_function
from metalax.models.adapters import from_linen
from metalax.models.adapters import from_nnx
from metalax.models.conv import Conv4
from metalax.models.mlp import MLP

__all__ = (
    "Conv4",
    "MLP",
    "from_function",
    "from_linen",
    "from_nnx",
)
