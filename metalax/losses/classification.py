"""Classification losses and metrics on logits and integer labels."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels.

  Args:
    logits: ``[n, num_classes]``.
    labels: ``[n]`` integer class indices in ``[0, num_classes)``.

  Returns:
    Per-example losses ``[n]``.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example correctness of the arg-max prediction.

  Args:
    logits: ``[n, num_classes]``.
    labels: ``[n]`` integer class indices.

  Returns:
    ``[n]`` float32, 1.0 where ``argmax(logits) == labels``.
  """
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
