"""Tests for metalax.mtl.aggregation.alignment: GradVac, ConFIG and DualProj against
NumPy transcriptions of LibMTL / TorchJD and exact solutions."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import mtl
from metalax.mtl.aggregation import alignment

KEY = jax.random.key(3)


def _grads(seed, num_tasks=3, dim=6):
  return np.random.default_rng(seed).normal(size=(num_tasks, dim))


# ---------------------------------------------------------------------------
# GradVac.


def _libmtl_gradvac(grads, rho, orders, beta, groups):
  """LibMTL's ``GradVac.backward`` on a [T, D] float64 matrix: ``orders[i]`` is task i's
  shuffled list of the other tasks, ``groups`` the (begin, end) column ranges."""
  pc_grads = grads.copy()
  rho = rho.copy()
  num_tasks = grads.shape[0]
  for i in range(num_tasks):
    for j in orders[i]:
      for k, (beg, end) in enumerate(groups):
        gi, gj = pc_grads[i, beg:end], grads[j, beg:end]
        rho_ijk = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj) + 1e-8)
        if rho_ijk < rho[i, j, k]:
          w = (np.linalg.norm(gi) * (rho[i, j, k] * np.sqrt(1 - rho_ijk**2) - rho_ijk
                                     * np.sqrt(1 - rho[i, j, k] ** 2))
               / (np.linalg.norm(gj) * np.sqrt(1 - rho[i, j, k] ** 2) + 1e-8))
          pc_grads[i, beg:end] += grads[j, beg:end] * w
        rho[i, j, k] = (1 - beta) * rho[i, j, k] + beta * rho_ijk
  return pc_grads.sum(0), rho


def _orders_of(key, num_tasks):
  """The partner orders :func:`gradvac` draws from its state key (as PCGrad)."""
  next_key, sample_key = jax.random.split(key)
  orders = np.asarray(jnp.argsort(jax.random.uniform(sample_key, (num_tasks, num_tasks)), axis=1))
  return next_key, [[int(j) for j in row if j != i] for i, row in enumerate(orders)]


def test_gradvac_matches_libmtl_over_steps_and_starts_as_pcgrad():
  beta, num_tasks, num_steps = 0.3, 3, 4
  aggregators = {g: mtl.gradvac(KEY, num_tasks, beta=beta, granularity=g) for g in ("model", "leaf")}
  pc = mtl.pcgrad(KEY)
  params = {"a": jnp.zeros(2), "b": jnp.zeros((2, 2))}  # leaves in order: a [2], b [2, 2]
  rng = np.random.default_rng(0)
  base = rng.normal(size=(num_tasks, 6))
  grad_seq = base + 0.7 * rng.normal(size=(num_steps,) + base.shape)
  # Correlated gradients, so the goals become positive and GradVac acts beyond PCGrad.
  grad_seq[:, 1] = -0.5 * grad_seq[:, 0] + 0.3 * grad_seq[:, 1]

  @jax.jit
  def run(grad_seq):
    results = {}
    for granularity, aggregator in aggregators.items():
      def step(state, grads, aggregator=aggregator):
        tree = {"a": grads[:, :2], "b": grads[:, 2:].reshape(num_tasks, 2, 2)}
        update, state = aggregator.update(tree, state)
        return state, (jnp.concatenate([update["a"], update["b"].ravel()]), state.targets)
      results[granularity] = jax.lax.scan(step, aggregator.init(params), grad_seq)[1]
    return results, pc.update(grad_seq[0], pc.init(None))[0]

  results, pcgrad_update = run(jnp.asarray(grad_seq, jnp.float32))
  for granularity, (updates, targets) in results.items():
    groups = [(0, 6)] if granularity == "model" else [(0, 2), (2, 6)]
    rho = np.zeros((num_tasks, num_tasks, len(groups)))
    key = KEY
    for step in range(num_steps):
      key, orders = _orders_of(key, num_tasks)
      expected, rho = _libmtl_gradvac(grad_seq[step], rho, orders, beta, groups)
      np.testing.assert_allclose(updates[step], expected, rtol=2e-4, atol=2e-5,
                                 err_msg=f"{granularity}, step {step}")
      np.testing.assert_allclose(np.moveaxis(np.asarray(targets[step]), 0, -1), rho, atol=2e-5)
    assert np.any(rho > 0)
    if granularity == "model":  # goals start at 0: the first call is PCGrad (same key, same orders)
      np.testing.assert_allclose(updates[0], pcgrad_update, rtol=1e-5, atol=1e-6)


def test_gradvac_validation():
  gv = mtl.gradvac(KEY, 4)
  with pytest.raises(ValueError, match="built for 4 tasks"):
    gv.update(jnp.ones((3, 2)), gv.init(None))
  with pytest.raises(ValueError, match="granularity"):
    mtl.gradvac(KEY, 2, granularity="layer")
  with pytest.raises(ValueError, match="beta"):
    mtl.gradvac(KEY, 2, beta=1.5)


# ---------------------------------------------------------------------------
# ConFIG.


def _torchjd_config(matrix, pref):
  """TorchJD's ``ConFIG.forward`` in NumPy."""
  norms = np.linalg.norm(matrix, axis=1)
  with np.errstate(invalid="ignore"):
    units = np.nan_to_num(matrix / norms[:, None], nan=0.0)
  best = np.linalg.pinv(units) @ pref
  unit = best / np.linalg.norm(best)
  return np.sum(matrix @ unit) * unit


def _batched(aggregator):
  """The aggregator's update, jitted and vmapped over a batch of [T, D] matrices."""
  return jax.jit(jax.vmap(lambda g: aggregator.update(g, aggregator.init(None))[0]))


def test_config_matches_torchjd_and_is_conflict_free():
  pref = np.array([1.0, 2.0, 0.5])
  cases = np.stack([_grads(seed, 3, 7) for seed in range(5)])
  cases[:3, 2] = -cases[:3, 0] + 0.2 * cases[:3, 2]  # strong conflicts
  cases[3, 1] = 0.0                                  # a zero gradient: a zero unit row
  default, preferred = mtl.conflict_free(), mtl.conflict_free(pref)
  run = jax.jit(jax.vmap(lambda g: (default.update(g, ())[0], preferred.update(g, ())[0])))
  got, got_pref = (np.asarray(x, np.float64) for x in run(jnp.asarray(cases, jnp.float32)))
  for grads, update, update_pref in zip(cases, got, got_pref):
    np.testing.assert_allclose(update, _torchjd_config(grads, np.ones(3)), rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(update_pref, _torchjd_config(grads, pref), rtol=2e-4, atol=1e-5)
  for update, grads in zip(got[:3], cases[:3]):
    projections = (grads / np.linalg.norm(grads, axis=1, keepdims=True)) @ update
    np.testing.assert_allclose(projections, projections[0], rtol=1e-3)  # same angle to every task
    assert projections[0] > 0
  with pytest.raises(ValueError, match="preference of shape"):
    preferred.update(jnp.ones((2, 3)), ())


# ---------------------------------------------------------------------------
# DualProj.


def _exact_box_qp(gram, lower):
  """``argmin v^T G v`` s.t. ``v >= lower`` by enumerating active sets (exact for tiny T)."""
  num_tasks = gram.shape[0]
  for size in range(num_tasks + 1):
    for active in itertools.combinations(range(num_tasks), size):
      free = [i for i in range(num_tasks) if i not in active]
      v = lower.astype(np.float64).copy()
      if free:
        rhs = -gram[np.ix_(free, list(active))] @ lower[list(active)]
        v[free] = np.linalg.solve(gram[np.ix_(free, free)], rhs)
      grad = gram @ v
      if np.all(v >= lower - 1e-12) and np.all(grad[list(active)] >= -1e-12):
        return v
  raise AssertionError("no KKT point")


def test_dualproj_matches_exact_qp_conflicts_with_no_task_and_keeps_the_mean():
  pref = np.array([0.5, 0.2, 0.3])
  cases = np.stack([_grads(10 + seed, 3, 4) for seed in range(5)])
  cases[:4, 1] = -cases[:4, 0] + 0.3 * cases[:4, 1]
  cases[4] = np.abs(cases[4])  # positive entries: no conflict
  default, preferred = mtl.dualproj(), mtl.dualproj(pref)
  run = jax.jit(jax.vmap(lambda g: (default.update(g, ())[0], preferred.update(g, ())[0])))
  got, got_pref = (np.asarray(x, np.float64) for x in run(jnp.asarray(cases, jnp.float32)))
  for grads, update in zip(cases[:4], got[:4]):
    gram = grads @ grads.T
    normalized = gram / np.trace(gram) + 1e-4 * np.eye(3)
    weights = _exact_box_qp(normalized, np.full(3, 1 / 3))
    np.testing.assert_allclose(update, weights @ grads, rtol=1e-3, atol=1e-5)
    # No conflict up to the regularisation: (G / tr G + reg_eps I) v >= 0.
    assert np.all(grads @ update >= -2e-4 * np.trace(gram) * weights.max())
  np.testing.assert_allclose(got[4], cases[4].mean(0), rtol=1e-5)
  np.testing.assert_allclose(got_pref[4], pref @ cases[4], rtol=1e-5)
  assert alignment.dualproj is mtl.dualproj
