"""Tests for metalax.mtl.pareto: Pareto MTL against a NumPy transcription of the official step (with
an exact min-norm solver) and on a toy front, the hypernetwork on a problem with a known front,
hypervolume against a brute-force cell count."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalax import mtl
from metalax.mtl import pareto


def _exact_min_norm(vectors):
  """``argmin_{l in simplex} |l @ vectors|^2`` by enumerating supports (KKT), for a few vectors."""
  gram = vectors @ vectors.T
  n = gram.shape[0]
  best, best_value = None, np.inf
  for size in range(1, n + 1):
    for support in itertools.combinations(range(n), size):
      s = list(support)
      system = np.block([[gram[np.ix_(s, s)], np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
      try:
        solution = np.linalg.lstsq(system, np.r_[np.zeros(size), 1.0], rcond=None)[0]
      except np.linalg.LinAlgError:
        continue
      weights = np.zeros(n)
      weights[s] = solution[:size]
      if np.all(weights >= -1e-12):
        value = weights @ gram @ weights
        if value < best_value - 1e-14:
          best, best_value = weights, value
  return best


def _official_main_weights(grads, losses, prefs, index):
  """The official ``get_d_paretomtl`` and ``normalize_coeff`` for any T."""
  w = prefs - prefs[index]
  active = w @ (losses / np.linalg.norm(losses)) > 0
  vectors = np.concatenate([grads, w[active] @ grads])
  sol = _exact_min_norm(vectors)
  weights = sol[:len(grads)] + sol[len(grads):] @ w[active]
  return weights * len(grads) / np.abs(weights).sum()


def _official_init_weights(grads, losses, prefs, index):
  """The official ``get_d_paretomtl_init`` (None when feasible)."""
  w = prefs - prefs[index]
  active = w @ (losses / np.linalg.norm(losses)) > 0
  if not active.any():
    return None
  sol = np.ones(1) if active.sum() == 1 else _exact_min_norm(w[active] @ grads)
  return sol @ w[active]


def test_pareto_mtl_weights_match_the_official_step():
  prefs = pareto.circle_points(5)
  rng = np.random.default_rng(0)
  run = jax.jit(pareto._pareto_mtl_weights)
  checked = {"init": 0, "main": 0}
  for trial in range(6):
    grads = rng.normal(size=(2, 6))
    losses = rng.uniform(0.2, 2.0, 2)
    index = trial % 5
    gram = jnp.asarray(grads @ grads.T, jnp.float32)
    args = (gram, jnp.asarray(losses, jnp.float32), jnp.asarray(prefs, jnp.float32), index)
    main, _ = run(*args, jnp.array(True))
    np.testing.assert_allclose(main, _official_main_weights(grads, losses, prefs, index), rtol=2e-3,
                               atol=2e-4)
    checked["main"] += 1
    init, feasible = run(*args, jnp.array(False))
    expected = _official_init_weights(grads, losses, prefs, index)
    if expected is None:
      assert bool(feasible)
    else:
      assert not bool(feasible)
      np.testing.assert_allclose(init, expected, rtol=2e-3, atol=2e-4)
      checked["init"] += 1
  assert checked["init"] >= 2


def test_pareto_mtl_reaches_each_preference_region_of_a_toy_front():
  # Two quadratics in the plane: the front is the segment between the centres.
  centres = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  prefs = pareto.circle_points(5)
  aggregators = [mtl.pareto_mtl(prefs, index) for index in (1,)]

  def task_losses(theta):
    return jnp.sum((theta[None] - centres) ** 2, axis=1)

  @jax.jit
  def run(theta0):
    finals = []
    for aggregator in aggregators:
      def step(carry, _, aggregator=aggregator):
        theta, state = carry
        losses, grads = mtl.task_gradients(task_losses, theta)
        update, state = aggregator.update(grads, state, task_losses=losses)
        return (theta - 0.02 * update, state), None
      (theta, state), _ = jax.lax.scan(step, (theta0, aggregator.init(None)), None, length=300)
      finals.append((theta, task_losses(theta), state.feasible))
    return finals

  for (theta, losses, feasible), index in zip(run(jnp.array([0.9, 0.9])), (1,)):
    losses = np.asarray(losses)
    assert bool(feasible)
    assert abs(float(theta.sum()) - 1.0) < 1e-2 and np.all(theta > 0)  # on the segment: the front
    differences = prefs - prefs[index]
    assert np.all(differences @ (losses / np.linalg.norm(losses)) <= 1e-3), (index, losses)
  with pytest.raises(ValueError, match="task_losses"):
    aggregators[0].update(jnp.ones((2, 2)), aggregators[0].init(None))


def test_hypernetwork_learns_a_known_front():
  # theta in R; L_i = (theta - c_i)^2; the minimiser of r1 L1 + r2 L2 is r1 c1 + r2 c2.
  centres = jnp.array([-1.0, 2.0])
  hypernet = mtl.ParetoHyperNetwork(target_shapes={"theta": ()}, hidden=16)
  optimizer = optax.adam(1e-2)
  # LeCun-normal kernels and zero biases drawn in NumPy (no init program to compile).
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(hypernet.init, jax.random.key(0), jnp.ones(2))["params"]
  phi = jax.tree.map(lambda s: (rng.normal(size=s.shape) / np.sqrt(s.shape[0]) if len(s.shape) == 2
                                else np.zeros(s.shape)).astype(np.float32), shapes)
  # Preferences [u, 1 - u], u ~ U(0, 1): the reference code's default, Dir(1, 1).
  u = rng.uniform(size=(600, 1)).astype(np.float32)
  preferences = np.concatenate([u, 1 - u], axis=1)

  @jax.jit
  def train(phi, preferences):
    def step(carry, preference):
      phi, opt_state = carry

      def loss(phi):
        theta = hypernet.apply({"params": phi}, preference)["theta"]
        return preference @ (theta - centres) ** 2

      updates, opt_state = optimizer.update(jax.grad(loss)(phi), opt_state)
      return (optax.apply_updates(phi, updates), opt_state), None

    (phi, _), _ = jax.lax.scan(step, (phi, optimizer.init(phi)), preferences)
    rays = jnp.asarray(pareto.circle_points(5, min_angle=0.1, max_angle=np.pi / 2 - 0.1))
    rays = rays / rays.sum(1, keepdims=True)
    return rays, jax.vmap(lambda r: hypernet.apply({"params": phi}, r)["theta"])(rays)

  rays, thetas = train(phi, preferences)
  np.testing.assert_allclose(thetas, rays @ centres, atol=0.1)


def test_sample_preferences_on_the_simplex():
  samples = np.asarray(mtl.sample_preferences(jax.random.key(2), 3, shape=(200,)))
  np.testing.assert_allclose(samples.sum(-1), 1.0, rtol=1e-5)
  assert np.all(samples >= 0) and np.allclose(samples.mean(0), 1 / 3, atol=0.05)  # Dir(1, 1, 1)


def _brute_force_hypervolume(points, reference):
  """Sum of the grid cells (from all coordinates) that some point dominates."""
  axes = [np.unique(np.r_[points[:, k], reference[k]]) for k in range(points.shape[1])]
  volume = 0.0
  for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
    low = np.array([axes[k][i] for k, i in enumerate(cell)])
    high = np.array([axes[k][i + 1] for k, i in enumerate(cell)])
    if np.any(np.all(points <= low, axis=1)):
      volume += np.prod(high - low)
  return volume


def test_hypervolume_matches_brute_force_and_nondominated():
  rng = np.random.default_rng(0)
  for d, n in ((2, 12), (3, 7)):
    points = np.round(rng.uniform(0, 1, (n, d)), 1)  # ties on purpose
    reference = np.full(d, 0.9)                       # some points outside it
    got = mtl.hypervolume(points, reference)
    inside = points[np.all(points < reference, axis=1)]
    assert got == pytest.approx(_brute_force_hypervolume(inside, reference), abs=1e-12)
    mask = mtl.nondominated(points)
    for i in range(n):
      dominated = any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in range(n))
      assert mask[i] == (not dominated)
  assert mtl.hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0])) == 3.0
  assert mtl.hypervolume(np.array([[4.0, 0.0]]), np.array([3.0, 3.0])) == 0.0
  with pytest.raises(ValueError, match="reference"):
    mtl.hypervolume(np.ones((2, 2)), np.ones(3))
