"""Regression losses."""

import jax
import jax.numpy as jnp


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Squared error per example, averaged over the target dimensions.

  Averaging the result over examples gives the usual mean squared error.

  Args:
    outputs: ``[n, *target_shape]``.
    targets: ``[n, *target_shape]``.

  Returns:
    Per-example losses ``[n]``.
  """
  if outputs.shape != targets.shape:
    raise ValueError(
        f"outputs and targets must have the same shape, got {tuple(outputs.shape)} "
        f"and {tuple(targets.shape)}.")
  error = jnp.square(outputs - targets)
  return jnp.mean(error.reshape(error.shape[0], -1), axis=-1)
