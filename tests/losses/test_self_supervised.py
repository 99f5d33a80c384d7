"""BYOL, MoCo, SimSiam, Barlow Twins, VICReg against NumPy transcriptions of the published code; EMA and queue."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import losses

RNG = np.random.default_rng(0)
Z1 = RNG.normal(size=(6, 4))
Z2 = Z1 + 0.5 * RNG.normal(size=(6, 4))


def np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_numeric_grad(f, x, eps=1e-6):
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[index] += eps
    down[index] -= eps
    grad[index] = (f(up) - f(down)) / (2 * eps)
  return grad


def np_barlow_twins(z1, z2, lambd=5e-3, eps=1e-5):
  """facebookresearch/barlowtwins main.py: BatchNorm1d(affine=False) in training mode, c / batch size."""
  bn = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + eps)       # biased variance, as BatchNorm
  c = bn(z1).T @ bn(z2) / len(z1)
  on_diag = np.sum((np.diag(c) - 1) ** 2)
  off_diag = np.sum(c ** 2) - np.sum(np.diag(c) ** 2)
  return on_diag + lambd * off_diag


def np_vicreg(x, y, sim=25.0, std=25.0, cov=1.0):
  """facebookresearch/vicreg main_vicreg.py, VICReg.forward."""
  n, d = x.shape
  repr_loss = np.mean((x - y) ** 2)
  x, y = x - x.mean(0), y - y.mean(0)
  std_x, std_y = np.sqrt(x.var(0, ddof=1) + 1e-4), np.sqrt(y.var(0, ddof=1) + 1e-4)
  std_loss = np.mean(np.maximum(1 - std_x, 0)) / 2 + np.mean(np.maximum(1 - std_y, 0)) / 2
  off = lambda c: np.sum(c ** 2) - np.sum(np.diag(c) ** 2)
  cov_loss = off(x.T @ x / (n - 1)) / d + off(y.T @ y / (n - 1)) / d
  return sim * repr_loss + std * std_loss + cov * cov_loss


def test_byol_and_simsiam_match_numpy_with_stop_gradient():
  np.testing.assert_allclose(losses.byol_loss(Z1, Z2), 2 - 2 * np.sum(np_unit(Z1) * np_unit(Z2), 1), rtol=1e-5)
  np.testing.assert_allclose(losses.simsiam_loss(Z1, Z2), -np.sum(np_unit(Z1) * np_unit(Z2), 1), rtol=1e-5)
  references = {losses.byol_loss: lambda p, z: np.sum(2 - 2 * np.sum(np_unit(p) * np_unit(z), 1)),
                losses.simsiam_loss: lambda p, z: -np.sum(np_unit(p) * np_unit(z))}
  for fn, reference in references.items():
    with jax.enable_x64():
      grad, grad_targets = jax.jit(jax.grad(lambda p, z: jnp.sum(fn(p, z)), argnums=(0, 1)))(jnp.asarray(Z1),
                                                                                             jnp.asarray(Z2))
      np.testing.assert_array_equal(grad_targets, 0.0)   # no gradient through the target / projection
    np.testing.assert_allclose(grad, np_numeric_grad(lambda p: reference(p, Z2), Z1.copy()), rtol=1e-6, atol=1e-9)
  # Identical directions: BYOL 0, SimSiam -1; all-equal rows stay finite.
  np.testing.assert_allclose(losses.byol_loss(Z1, 3 * Z1), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.simsiam_loss(Z1, 3 * Z1), -1.0, rtol=1e-6)
  equal = np.ones((4, 3), np.float32)
  assert np.all(np.isfinite(jax.grad(lambda p: jnp.sum(losses.byol_loss(p, equal)))(equal)))


def test_moco_loss_matches_numpy_and_queue_ring_buffer():
  queue = losses.queue_init(jax.random.key(0), 7, 4)
  assert queue.embeddings.shape == (7, 4) and int(queue.pointer) == 0
  np.testing.assert_allclose(np.linalg.norm(queue.embeddings, axis=1), 1.0, rtol=1e-6)
  q, k, negatives = np_unit(Z1), np_unit(Z2), np.asarray(queue.embeddings, np.float64)
  logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ negatives.T], 1) / 0.2
  expected = np.log(np.exp(logits).sum(1)) - logits[:, 0]
  np.testing.assert_allclose(losses.moco_loss(Z1, Z2, queue.embeddings), expected, rtol=1e-5)
  grads = jax.grad(lambda k, queue: jnp.sum(losses.moco_loss(jnp.asarray(Z1), k, queue)), argnums=(0, 1))(
      jnp.asarray(Z2, jnp.float32), queue.embeddings)
  for grad in grads:
    np.testing.assert_array_equal(grad, 0.0)
  # Enqueue 3 + 3 + 3 keys into 7 rows: the third batch wraps around, overwriting the oldest rows.
  rows = list(np.asarray(queue.embeddings))
  pointer = 0
  update = jax.jit(losses.queue_update)
  for _ in range(3):
    keys = RNG.normal(size=(3, 4)).astype(np.float32)
    queue = update(queue, keys)
    for key in keys:
      rows[pointer] = key / np.linalg.norm(key)
      pointer = (pointer + 1) % 7
    np.testing.assert_allclose(queue.embeddings, np.stack(rows), rtol=1e-6)
    assert int(queue.pointer) == pointer
  with pytest.raises(ValueError, match="queue size"):
    losses.queue_update(queue, np.ones((8, 4), np.float32))


def test_barlow_twins_and_vicreg_match_published_code_values_and_gradients():
  for fn, reference in ((losses.barlow_twins_loss, np_barlow_twins), (losses.vicreg_loss, np_vicreg)):
    with jax.enable_x64():
      value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
      value, grads = value_and_grad(jnp.asarray(Z1), jnp.asarray(Z2))
      np.testing.assert_allclose(value, reference(Z1, Z2), rtol=1e-10)
      np.testing.assert_allclose(grads[0], np_numeric_grad(lambda z: reference(z, Z2), Z1.copy()), rtol=1e-5,
                                 atol=1e-7)
      np.testing.assert_allclose(grads[1], np_numeric_grad(lambda z: reference(Z1, z), Z2.copy()), rtol=1e-5,
                                 atol=1e-7)
      # All-equal embeddings (complete collapse): finite values and gradients, equal to the published code's.
      value, grads = value_and_grad(jnp.ones((6, 4)), jnp.ones((6, 4)))
      np.testing.assert_allclose(value, reference(np.ones((6, 4)), np.ones((6, 4))), rtol=1e-10)
      assert all(np.all(np.isfinite(grad)) for grad in grads)
  # Barlow Twins' lambda and VICReg's weights: each term alone.
  np.testing.assert_allclose(losses.barlow_twins_loss(Z1, Z2, redundancy_weight=0.3), np_barlow_twins(Z1, Z2, 0.3),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.vicreg_loss(Z1, Z2, invariance_weight=1, variance_weight=0, covariance_weight=0),
                             np.mean((Z1 - Z2) ** 2), rtol=1e-5)
  # Decorrelated, standardised, identical views: Barlow Twins' minimum 0; VICReg's 0 when the variance is >= 1.
  basis = np.concatenate([np.eye(4), -np.eye(4)]) * 2.0
  np.testing.assert_allclose(losses.barlow_twins_loss(basis, basis), 0.0, atol=1e-5)
  np.testing.assert_allclose(losses.vicreg_loss(basis, basis), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="n >= 2"):
    losses.vicreg_loss(Z1[:1], Z2[:1])
  with pytest.raises(ValueError, match="same shape"):
    losses.barlow_twins_loss(Z1, Z2[:, :3])


def test_target_network_update_and_momentum_schedule():
  online = {"w": jnp.arange(4.0), "b": {"c": jnp.ones(2)}}
  target = {"w": jnp.zeros(4), "b": {"c": jnp.full(2, 3.0)}}
  new = losses.target_network_update(online, target, 0.9)
  np.testing.assert_allclose(new["w"], 0.1 * np.arange(4.0), rtol=1e-6)
  np.testing.assert_allclose(new["b"]["c"], 0.9 * 3 + 0.1, rtol=1e-6)
  same = losses.target_network_update(online, target, 1.0)
  np.testing.assert_array_equal(same["w"], target["w"])
  # A traced momentum (from the schedule, inside jit) is accepted.
  schedule = losses.momentum_schedule(100)
  jitted = jax.jit(lambda step: losses.target_network_update(online, target, schedule(step)))(50)
  np.testing.assert_allclose(jitted["w"], (1 - 0.998) * np.arange(4.0), rtol=1e-4)
  # BYOL: tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2.
  for step in (0, 10, 50, 99, 100, 150):
    expected = 1 - (1 - 0.996) * (np.cos(np.pi * min(step, 100) / 100) + 1) / 2
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)
  np.testing.assert_allclose(losses.momentum_schedule(10, 0.999, 0.999)(7), 0.999, rtol=1e-7)
  with pytest.raises(ValueError, match="momentum"):
    losses.target_network_update(online, target, 1.5)
  with pytest.raises(ValueError, match="num_steps"):
    losses.momentum_schedule(0)
