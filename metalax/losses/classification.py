"""Classification losses and metrics on logits and integer labels."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels.

  A label outside ``[0, num_classes)`` is an error: ``ValueError`` when the
  labels are concrete arrays; when they are traced (under ``jit``, ``vmap``,
  ``grad``) their values are unknown, and such an example's loss is NaN, so
  that the mean loss is NaN too (optax's own function gives NaN above the
  range but wraps negative labels around to the last classes).

  Args:
    logits: ``[..., num_classes]``.
    labels: ``[...]`` integer class indices in ``[0, num_classes)``.

  Returns:
    Per-example losses ``[...]``.

  Raises:
    ValueError: if ``labels`` are not integers, their shape is not that of
      ``logits`` without the last axis, or (concrete labels) one lies outside
      ``[0, num_classes)``.

  Example:
    >>> cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 2]))   # log(3) each
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"cross_entropy: labels must be integer class indices, got dtype {labels.dtype}.")
  if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
    raise ValueError(f"cross_entropy: labels must have the shape of logits without its class axis, "
                     f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}.")
  num_classes = logits.shape[-1]
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    values = np.asarray(labels)   # NumPy: jnp.min would be staged out inside a trace
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
      raise ValueError(f"cross_entropy: labels must lie in [0, {num_classes}) for logits with "
                       f"{num_classes} classes, got labels from {low} to {high}.")
  in_range = (labels >= 0) & (labels < num_classes)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(in_range, labels, 0))
  return jnp.where(in_range, losses, jnp.nan)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example correctness of the arg-max prediction.

  Args:
    logits: ``[n, num_classes]``.
    labels: ``[n]`` integer class indices.

  Returns:
    ``[n]`` float32, 1.0 where ``argmax(logits) == labels``.
  """
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
