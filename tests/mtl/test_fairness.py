"""Tests for metalax.mtl.aggregation.fairness: FairGrad (against SciPy's least_squares,
LibMTL's solver, and closed forms) and DB-MTL (against a NumPy transcription of LibMTL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from metalax import mtl


def _grads(seed, num_tasks=3, dim=6):
  return np.random.default_rng(seed).normal(size=(num_tasks, dim))


def test_fairgrad_fixed_point_least_squares_closed_form_nash_and_clipping():
  alphas = (0.5, 1.0, 2.0)
  scales = np.array([[1.0], [3.0], [0.3]])
  cases = np.stack([_grads(seed, 3, 8) * scales for seed in range(3)]
                   + [np.pad(np.diag([1.0, 2.0, 4.0]), ((0, 0), (0, 5)))])  # last: orthogonal
  aggregators = [mtl.fairgrad(alpha, max_norm=0.0) for alpha in alphas]
  nash = mtl.nash_mtl(3, max_norm=0.0)
  clipped = mtl.fairgrad(1.0, max_norm=0.5)

  @jax.jit
  def run(cases):
    fair = jax.vmap(lambda g: [a.update(g, ())[0] for a in aggregators])(cases)
    return fair, nash.update(cases[0], nash.init(None))[0], clipped.update(cases[0], ())[0]

  fair, nash_update, clipped_update = run(jnp.asarray(cases, jnp.float32))
  for alpha, updates in zip(alphas, fair):
    updates = np.asarray(updates, np.float64)
    for grads, update in zip(cases[:3], updates[:3]):
      gram = grads @ grads.T
      # LibMTL's FairGrad solver, in float64.
      objective = lambda x: gram @ x - np.power(1 / x, 1 / alpha)
      reference = optimize.least_squares(objective, np.ones(3) / 3, bounds=(0, np.inf),
                                         xtol=1e-15, ftol=1e-15, gtol=1e-15).x
      np.testing.assert_allclose(update, reference @ grads, rtol=1e-4, atol=1e-6)
      weights = np.linalg.lstsq(grads.T, update, rcond=None)[0]
      np.testing.assert_allclose(gram @ weights, weights ** (-1 / alpha), rtol=1e-3)
    # Orthogonal gradients: |g_i|^2 w_i = w_i^(-1/alpha), w_i = |g_i|^(-2 alpha / (alpha + 1)).
    weights = np.array([1.0, 2.0, 4.0]) ** (-2 * alpha / (alpha + 1))
    np.testing.assert_allclose(updates[3], np.pad(weights * [1.0, 2.0, 4.0], (0, 5)), rtol=1e-5,
                               atol=1e-7)
  # alpha = 1 is Nash-MTL's fixed point (both unclipped); clipping bounds the norm.
  np.testing.assert_allclose(fair[1][0], nash_update, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(clipped_update, 0.5 * fair[1][0] / np.linalg.norm(fair[1][0]),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="alpha"):
    mtl.fairgrad(0.0)


def _libmtl_db_mtl(grad_seq, loss_seq, beta, beta_sigma):
  """LibMTL's ``DB_MTL.backward`` over a sequence of steps ([T, D] gradients of the raw losses)."""
  buffer = np.zeros_like(grad_seq[0])
  updates = []
  for step, (grads, losses) in enumerate(zip(grad_seq, loss_seq), start=1):
    batch_grads = grads / (losses[:, None] + 1e-8)  # the gradients of log(L + 1e-8)
    buffer = batch_grads + (beta / step**beta_sigma) * (buffer - batch_grads)
    norms = np.linalg.norm(buffer, axis=-1)
    alpha = norms.max() / (norms + 1e-8)
    updates.append(sum(alpha[i] * buffer[i] for i in range(len(alpha))))
  return updates


def test_db_mtl_matches_libmtl_over_steps():
  rng = np.random.default_rng(0)
  grad_seq = [rng.normal(size=(3, 6)) * np.array([[1.0], [10.0], [0.1]]) for _ in range(4)]
  loss_seq = [rng.uniform(0.1, 3.0, size=3) for _ in range(4)]
  beta, beta_sigma = 0.9, 0.5
  aggregator = mtl.db_mtl(3, beta=beta, beta_sigma=beta_sigma)
  params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
  state = aggregator.init(params)
  update_fn = jax.jit(aggregator.update)
  expected = _libmtl_db_mtl(grad_seq, loss_seq, beta, beta_sigma)
  for grads, losses, reference in zip(grad_seq, loss_seq, expected):
    tree = {"w": jnp.asarray(grads[:, :4].reshape(3, 2, 2), jnp.float32),
            "b": jnp.asarray(grads[:, 4:], jnp.float32)}
    update, state = update_fn(tree, state, task_losses=jnp.asarray(losses, jnp.float32))
    got = np.concatenate([np.asarray(update["b"]), np.asarray(update["w"]).ravel()])
    np.testing.assert_allclose(got, np.concatenate([reference[4:], reference[:4]]), rtol=1e-4)
  assert int(state.step) == 4
  with pytest.raises(ValueError, match="task_losses"):
    aggregator.update(tree, state)
  with pytest.raises(ValueError, match="beta"):
    mtl.db_mtl(3, beta=1.0)
