"""Tests for metalax.mtl.loss_balancing: FAMO, IMTL-L, GLS and STCH against NumPy
transcriptions of LibMTL / the official code, closed forms and autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import mtl


def _loss_and_grad(weighting, params, losses, state):
  """``(total, weights, new_state, d total / d losses)`` in one jitted call."""

  @jax.jit
  def run(params, losses, state):
    (total, (weights, new_state)), grad = jax.value_and_grad(
        lambda x: weighting.loss(params, x, state), has_aux=True)(losses)
    return total, weights, new_state, grad

  return run(params, losses, state)


# ---------------------------------------------------------------------------
# FAMO.


class _TorchAdam:
  """``torch.optim.Adam(lr, weight_decay)`` on one NumPy vector (coupled L2 decay)."""

  def __init__(self, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
    self.m = self.v = 0.0
    self.t = 0

  def step(self, param, grad):
    self.t += 1
    grad = grad + self.wd * param
    b1, b2 = self.betas
    self.m = b1 * self.m + (1 - b1) * grad
    self.v = b2 * self.v + (1 - b2) * grad**2
    m_hat = self.m / (1 - b1**self.t)
    denom = np.sqrt(self.v) / np.sqrt(1 - b2**self.t) + self.eps
    return param - self.lr * m_hat / denom


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def test_famo_matches_libmtl_over_steps():
  rng = np.random.default_rng(0)
  num_tasks, lr, gamma = 3, 0.025, 1e-3
  min_losses = np.array([0.0, 0.1, 0.0])
  weighting = mtl.famo(learning_rate=lr, weight_decay=gamma, min_losses=min_losses)
  params, state = weighting.init(num_tasks)
  update_fn = jax.jit(weighting.update)
  w = np.zeros(num_tasks)
  adam = _TorchAdam(lr, gamma)
  for _ in range(4):
    before = rng.uniform(0.5, 3.0, num_tasks)
    after = before * rng.uniform(0.6, 1.0, num_tasks)
    # LibMTL's FAMO.backward: the weighted log loss and its gradient factors.
    z = _softmax(w)
    d = before - min_losses + 1e-8
    c = np.sum(z / d)
    total, weights, state, grad = _loss_and_grad(weighting, params, jnp.asarray(before, jnp.float32),
                                                 state)
    np.testing.assert_allclose(total, np.sum(np.log(d) * z / c), rtol=1e-5)
    np.testing.assert_allclose(grad, z / (c * d), rtol=1e-5)
    np.testing.assert_allclose(weights, grad, rtol=1e-6)
    assert float(jnp.sum(weights)) == pytest.approx(1.0, rel=1e-5)
    # FAMO.update_w: delta of the log gaps through the softmax Jacobian, one Adam step.
    delta = np.log(before - min_losses + 1e-8) - np.log(after - min_losses + 1e-8)
    w = adam.step(w, z * (delta - z @ delta))
    state = update_fn(state, jnp.asarray(after, jnp.float32))
    np.testing.assert_allclose(state.logits, w, rtol=1e-4, atol=1e-7)
  assert np.ptp(w) > 0
  with pytest.raises(ValueError, match="min_losses"):
    weighting.init(2)


# ---------------------------------------------------------------------------
# IMTL-L and GLS.


def test_imtl_l_total_gradient_and_minimiser():
  weighting = mtl.imtl_l()
  params, state = weighting.init(3)
  losses = jnp.array([2.0, 0.5, 1.5])
  params = {"log_scales": jnp.array([0.3, -0.2, 0.0])}
  (total, (weights, _)), grads = jax.value_and_grad(weighting.loss, has_aux=True)(
      params, losses, state)
  s = np.array([0.3, -0.2, 0.0])
  np.testing.assert_allclose(total, np.sum(np.exp(s) * losses - s), rtol=1e-6)
  np.testing.assert_allclose(weights, np.exp(s), rtol=1e-6)
  np.testing.assert_allclose(grads["log_scales"], np.exp(s) * losses - 1.0, rtol=1e-6)
  at_minimum = {"log_scales": -jnp.log(losses)}  # e^s = 1 / L: zero gradient
  grads = jax.grad(lambda p: weighting.loss(p, losses, state)[0])(at_minimum)
  np.testing.assert_allclose(grads["log_scales"], 0.0, atol=1e-6)


def test_geometric_loss_matches_product_form_and_gradient():
  weighting = mtl.geometric_loss()
  params, state = weighting.init(4)
  losses = np.array([0.3, 2.0, 1.1, 0.05])
  total, weights, _, grad = _loss_and_grad(weighting, params, jnp.asarray(losses, jnp.float32),
                                           state)
  expected = np.prod(losses) ** (1 / 4)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  np.testing.assert_allclose(grad, expected / (4 * losses), rtol=1e-5)
  np.testing.assert_allclose(weights, grad, rtol=1e-6)
  # Many small losses: the product underflows in float32, the mean of logs does not.
  tiny = jnp.full((40,), 1e-3)
  total, _ = weighting.loss({}, tiny, ())
  assert float(total) == pytest.approx(1e-3, rel=1e-4)


# ---------------------------------------------------------------------------
# STCH.


class _LibMTLSTCH:
  """LibMTL's ``STCH.backward`` (the total it backpropagates), epoch given by the trainer."""

  def __init__(self, mu, warmup_epoch):
    self.mu, self.warmup_epoch = mu, warmup_epoch
    self.nadir, self.average_loss, self.count = None, 0.0, 0

  def total(self, losses, epoch):
    if epoch < self.warmup_epoch:
      return np.sum(np.log(losses + 1e-20))
    if epoch == self.warmup_epoch:
      self.average_loss = self.average_loss + losses
      self.count += 1
      return np.sum(np.log(losses + 1e-20))
    if self.nadir is None:
      self.nadir = self.average_loss / self.count
    scaled = np.log(losses / self.nadir + 1e-20)
    reg = scaled - scaled.max()
    return self.mu * np.log(np.sum(np.exp(reg / self.mu))) * len(losses)


def test_stch_matches_libmtl_schedule_and_gradient():
  steps_per_epoch, warmup, mu = 2, 1, 0.5
  weighting = mtl.stch(steps_per_epoch=steps_per_epoch, mu=mu, warmup_epochs=warmup)
  params, state = weighting.init(3)
  reference = _LibMTLSTCH(mu, warmup)
  rng = np.random.default_rng(1)
  for step in range(8):
    losses = rng.uniform(0.2, 2.0, 3)
    total, weights, state, grad = _loss_and_grad(weighting, params, jnp.asarray(losses, jnp.float32),
                                                 state)
    expected = reference.total(losses, step // steps_per_epoch)
    # LibMTL shifts by the detached max inside the log-sum-exp; its value differs by that shift
    # times T, its gradient not at all.
    if step // steps_per_epoch > warmup:
      scaled = np.log(losses / reference.nadir + 1e-20)
      expected = expected + len(losses) * scaled.max()
      soft = _softmax(scaled / mu)
      expected_grad = len(losses) * soft / losses
    else:
      expected_grad = 1.0 / losses
    np.testing.assert_allclose(total, expected, rtol=1e-5, err_msg=f"step {step}")
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, err_msg=f"step {step}")
    np.testing.assert_allclose(weights, grad, rtol=1e-5)
  assert int(state.count) == steps_per_epoch
  with pytest.raises(ValueError, match="steps_per_epoch"):
    mtl.stch(steps_per_epoch=0)
  with pytest.raises(ValueError, match="preference"):
    mtl.stch(steps_per_epoch=1, preference=[1.0, -1.0])
