"""A user's own multi-task components, loaded by import path in the tests (``tests.experiments.multitask_user:...``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

import metalax
from experiments import multitask
from metalax.types import Batch


class TinyTrunk(nn.Module):
  """A trunk of the user's own: one dense layer with a tanh, ``[n, ...] -> [n, 6]``."""

  @nn.compact
  def __call__(self, x):
    return jnp.tanh(nn.Dense(6)(x.reshape(x.shape[0], -1)))


def generated(config) -> multitask.MultitaskData:
  """Two tasks on shared 8-dim inputs: a 3-class classification and a 1-dim regression, 64 / 32 examples."""
  del config

  def split(key, n):
    key_x, key_w = jax.random.split(key)
    x = jax.random.normal(key_x, (n, 8))
    w = jax.random.normal(jax.random.key(99), (8, 4))  # the same tasks in both splits
    h = x @ w
    return Batch(x, (jnp.argmax(h[:, :3], axis=1).astype(jnp.int32), jnp.sin(h[:, 3:])))

  return multitask.MultitaskData(split(jax.random.key(1), 64), split(jax.random.key(2), 32),
                                 (metalax.losses.cross_entropy, metalax.losses.squared_error), (3, 1), (True, False))
