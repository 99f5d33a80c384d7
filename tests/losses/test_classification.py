"""cross_entropy and accuracy against NumPy, and labels outside [0, C)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import losses


def test_cross_entropy_matches_numpy_and_rejects_labels_out_of_range():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 2], np.int32)
  shifted = logits - logits.max(-1, keepdims=True)
  expected = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(4), labels]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)
  np.testing.assert_array_equal(losses.accuracy(logits, labels), logits.argmax(-1) == labels)

  for bad in ([0, 2, 3, 1], [0, -1, 1, 2]):   # concrete labels: a clear error (optax: NaN or a wrap-around)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
      losses.cross_entropy(logits, np.array(bad, np.int32))
  with pytest.raises(ValueError, match="integer class indices"):
    losses.cross_entropy(logits, labels.astype(np.float32))
  with pytest.raises(ValueError, match="shape of logits"):
    losses.cross_entropy(logits, labels[:3])

  # Traced labels: the documented NaN for every label out of range, gradients finite elsewhere.
  traced = np.asarray(jax.jit(losses.cross_entropy)(logits, np.array([0, 3, -1, 2], np.int32)))
  assert np.isnan(traced[1]) and np.isnan(traced[2])
  np.testing.assert_allclose(traced[[0, 3]], expected[[0, 3]], rtol=1e-6)
  grads = jax.jit(jax.grad(lambda x: jnp.sum(losses.cross_entropy(x, labels))))(logits)
  probabilities = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
  np.testing.assert_allclose(grads, probabilities - np.eye(3)[labels], rtol=1e-5, atol=1e-6)
