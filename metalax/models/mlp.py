"""Multi-layer perceptron."""

from typing import Callable, Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Fully connected network: ``len(features)`` hidden layers, then a linear output.

  The MAML sinusoid regressor is ``MLP(features=(40, 40), num_outputs=1)``.

  Attributes:
    features: widths of the hidden layers.
    num_outputs: width of the output layer (``num_ways`` for classification).
    activation: applied after every hidden layer.

  Inputs ``[n, ...]`` are flattened to ``[n, d]``; outputs are ``[n, num_outputs]``.
  """

  features: Sequence[int] = (40, 40)
  num_outputs: int = 1
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = inputs.reshape(inputs.shape[0], -1)
    for width in self.features:
      x = self.activation(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs, name="head")(x)
