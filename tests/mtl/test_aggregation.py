"""Tests for metalax.mtl.aggregation: closed forms, NumPy references, invariants."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.experimental import aggregating
from scipy import optimize

from metalax import mtl

KEY = jax.random.key(0)


MAKERS = {
    "linear_scalarization": lambda: mtl.linear_scalarization(),
    "pcgrad": lambda: mtl.pcgrad(KEY),
    "mgda": lambda: mtl.mgda(),
    "mgda_frank_wolfe": lambda: mtl.mgda(method="frank_wolfe"),
    "mgda_projected": lambda: mtl.mgda(method="projected"),
    "cagrad": lambda: mtl.cagrad(),
    "graddrop": lambda: mtl.graddrop(KEY),
    "imtl_g": lambda: mtl.imtl_g(),
    "nash_mtl": lambda: mtl.nash_mtl(3, max_norm=0.0),
    "aligned_mtl": lambda: mtl.aligned_mtl(),
    "upgrad": lambda: mtl.upgrad(),
}
# What each method returns on T equal gradients g (module docstring).
EQUAL_REDUCTION = {
    "linear_scalarization": 3.0, "pcgrad": 3.0, "mgda": 1.0, "mgda_frank_wolfe": 1.0,
    "cagrad": 1.5 / 1.25, "graddrop": 3.0, "imtl_g": 1.0,
    "aligned_mtl": 3.0, "upgrad": 1.0,
}


@functools.lru_cache(maxsize=None)
def _jitted(name):
  """One aggregator and one compiled update per method, shared by the tests."""
  aggregator = MAKERS[name]()
  return aggregator, jax.jit(aggregator.update)


def _run(name, task_grads):
  """The jitted update of ``name`` on a [3, 5] matrix (one compilation per method)."""
  aggregator, update_fn = _jitted(name)
  update, _ = update_fn(jnp.asarray(task_grads, jnp.float32), aggregator.init(None))
  return np.asarray(update, np.float64)


def _random_grads(seed, num_tasks=3, dim=5):
  return np.random.default_rng(seed).normal(size=(num_tasks, dim)).astype(np.float32)


def _aggregate(aggregator, task_grads, **extra_args):
  state = aggregator.init(None)
  update, _ = aggregator.update(jax.tree.map(jnp.asarray, task_grads), state, **extra_args)
  return jax.tree.map(np.asarray, update)


# ---------------------------------------------------------------------------
# task_gradients.


def _task_losses_fn(params, inputs):
  hidden = jnp.tanh(inputs @ params["w"] + params["b"])     # [n, 3]
  return jnp.mean(hidden**2, axis=0) * jnp.array([1.0, 2.0, 3.0]), hidden


def test_task_gradients_matches_python_loop_of_grad():
  params = {"w": jnp.arange(6.0).reshape(2, 3) / 6, "b": jnp.ones(3) * 0.1}
  inputs = jnp.array([[1.0, -1.0], [0.5, 2.0]])
  (losses, hidden), task_grads = mtl.task_gradients(_task_losses_fn, params, inputs, has_aux=True)
  assert losses.shape == (3,) and hidden.shape == (2, 3)
  assert task_grads["w"].shape == (3, 2, 3) and task_grads["b"].shape == (3, 3)
  for t in range(3):
    expected = jax.grad(lambda p, t=t: _task_losses_fn(p, inputs)[0][t])(params)
    np.testing.assert_allclose(task_grads["w"][t], expected["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(task_grads["b"][t], expected["b"], rtol=1e-6, atol=1e-7)
  norms = mtl.task_gradient_norms(task_grads)
  expected_norms = [np.sqrt(np.sum(task_grads["w"][t] ** 2) + np.sum(task_grads["b"][t] ** 2))
                    for t in range(3)]
  np.testing.assert_allclose(norms, expected_norms, rtol=1e-6)


def test_task_gradients_rejects_scalar_loss():
  with pytest.raises(ValueError, match=r"vector \[T\]"):
    mtl.task_gradients(lambda p: jnp.sum(p), jnp.ones(3))


def test_mismatched_task_axes_raise():
  bad = {"a": jnp.ones((3, 2)), "b": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="leading task axis"):
    _aggregate(mtl.imtl_g(), bad)


# ---------------------------------------------------------------------------
# Every method: equal gradients, jit against no jit, pytrees against matrices.


@pytest.mark.parametrize("name", sorted(EQUAL_REDUCTION))
def test_equal_gradients_give_mean_or_sum(name):
  g = np.array([0.5, -1.0, 2.0, 0.0, 1.0], np.float32)
  np.testing.assert_allclose(_run(name, np.stack([g] * 3)), EQUAL_REDUCTION[name] * g,
                             rtol=1e-4, atol=1e-5)


def test_nash_mtl_on_equal_gradients():
  g = np.array([3.0, 0.0, 4.0, 0.0, 0.0], np.float32)
  # alpha_i = 1 / (sqrt(T) |g|): d = sqrt(T) g / |g| (before clipping to max_norm).
  np.testing.assert_allclose(_run("nash_mtl", np.stack([g] * 3)), np.sqrt(3) * g / 5, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear_scalarization", "pcgrad", "mgda", "cagrad",
                                  "imtl_g", "nash_mtl", "aligned_mtl", "upgrad"])
def test_eager_pytree_agrees_with_jitted_matrix(name):
  grads = _random_grads(1)
  tree = {"a": jnp.asarray(grads[:, :2]), "b": jnp.asarray(grads[:, 2:].reshape(3, 3, 1))}
  eager = _aggregate(MAKERS[name](), tree)  # no jax.jit; a pytree of two leaves.
  flat = np.concatenate([eager["a"], eager["b"].reshape(-1)])
  np.testing.assert_allclose(flat, _run(name, grads), rtol=1e-4, atol=1e-5)


def test_graddrop_eager_agrees_with_jit():
  grads = _random_grads(1)
  np.testing.assert_allclose(_aggregate(MAKERS["graddrop"](), grads), _run("graddrop", grads),
                             rtol=1e-6)


@pytest.mark.parametrize("name", sorted(set(MAKERS) - {"mgda_projected"}))  # same constructor as mgda
def test_constructor_runs_inside_jit(name):
  """Constructors check their arguments without tracing, so a step may build the aggregator."""
  grads = jnp.asarray(_random_grads(2))

  @jax.jit
  def run(grads):
    aggregator = MAKERS[name]()
    return aggregator.update(grads, aggregator.init(None))[0]

  np.testing.assert_allclose(run(grads), _run(name, np.asarray(grads)), rtol=1e-4, atol=1e-5)


def test_aggregator_is_optax_aggregator_and_runs_in_process():
  assert isinstance(mtl.pcgrad(KEY), aggregating.Aggregator)
  optimizer = aggregating.process(optax.identity(), mtl.linear_scalarization([1.0, 3.0]),
                                  optax.sgd(0.1))
  params = jnp.zeros(2)
  state = optimizer.init(params)
  grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  updates, state = jax.jit(optimizer.update)(grads, state, params)
  np.testing.assert_allclose(updates, [-0.1, -0.3], rtol=1e-5)


def test_partition_aggregates_shared_and_sums_heads():
  params = {"shared": jnp.zeros(2), "heads": jnp.zeros((2, 1))}
  labels = {"shared": "shared", "heads": "heads"}
  aggregator = optax.transforms.partition(
      {"shared": mtl.pcgrad(KEY), "heads": mtl.linear_scalarization()}, labels)
  task_grads = {"shared": jnp.array([[1.0, 0.0], [-1.0, 1.0]]),
                "heads": jnp.array([[[2.0], [0.0]], [[0.0], [3.0]]])}
  state = aggregator.init(params)
  update, _ = jax.jit(aggregator.update)(task_grads, state, params)
  np.testing.assert_allclose(update["shared"], [0.5, 1.5], rtol=1e-6)
  np.testing.assert_allclose(update["heads"], [[2.0], [3.0]])


# ---------------------------------------------------------------------------
# PCGrad.


def _pcgrad_numpy(grads, orders):
  projected = grads.astype(np.float64).copy()
  for i, order in enumerate(orders):
    for j in order:
      dot = projected[i] @ grads[j]
      if dot < 0:
        projected[i] -= dot / (grads[j] @ grads[j]) * grads[j]
  return projected.sum(0)


def test_pcgrad_two_conflicting_gradients_remove_conflict_exactly():
  g1, g2 = np.array([1.0, 0.5, 0.0]), np.array([-2.0, 1.0, 1.0])
  assert g1 @ g2 < 0
  expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
  grads = np.stack([g1, g2]).astype(np.float32)
  np.testing.assert_allclose(_aggregate(mtl.pcgrad(KEY), grads), expected, rtol=1e-5)
  np.testing.assert_allclose(_aggregate(mtl.pcgrad(KEY, reduction="mean"), grads), expected / 2,
                             rtol=1e-5)


NON_CONFLICTING = np.array([[1.0, 0.5, 0.0, 0.2, 0.0], [0.2, 1.0, -1.0, 0.0, 0.3],
                            [0.1, 0.2, 0.05, 0.0, 0.0]], np.float32)


def test_pcgrad_leaves_non_conflicting_gradients_unchanged():
  assert np.all(NON_CONFLICTING @ NON_CONFLICTING.T >= 0)
  np.testing.assert_allclose(_run("pcgrad", NON_CONFLICTING), NON_CONFLICTING.sum(0), rtol=1e-6)


def test_pcgrad_three_tasks_matches_numpy_for_some_order_and_orders_vary():
  grads = np.array([[1.0, 0.2, 0.0, 0.0, 0.1], [-0.9, 0.8, 0.3, 0.0, 0.0],
                    [-0.5, -1.0, 0.7, 0.2, 0.0]], np.float32)
  others = [list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)]
  outcomes = np.array([_pcgrad_numpy(grads, orders) for orders in itertools.product(*others)])
  outcomes = np.unique(np.round(outcomes, 5), axis=0)
  aggregator, update_fn = _jitted("pcgrad")
  state = aggregator.init(None)
  seen = set()
  for _ in range(12):
    update, state = update_fn(jnp.asarray(grads), state)
    distances = np.abs(outcomes - np.asarray(update)[None]).max(axis=1)
    assert distances.min() < 1e-4
    seen.add(int(np.argmin(distances)))
  assert len(outcomes) > 1 and len(seen) > 1  # the random order matters and changes.


# ---------------------------------------------------------------------------
# MGDA.


_min_norm_solver_jit = jax.jit(mtl.min_norm_solver)


@pytest.mark.parametrize("seed", range(3))
def test_min_norm_solver_two_tasks_closed_form(seed):
  rng = np.random.default_rng(seed)
  g1 = rng.normal(size=4)
  g2 = g1 * 3.0 if seed == 2 else rng.normal(size=4)  # seed 2: the clipped case.
  alpha = np.clip(((g2 - g1) @ g2) / np.sum((g1 - g2) ** 2), 0.0, 1.0)
  weights = _min_norm_solver_jit(jnp.asarray(np.stack([g1, g2]), jnp.float32))
  np.testing.assert_allclose(weights, [alpha, 1 - alpha], atol=1e-5)


def test_mgda_two_tasks_update():
  g1, g2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
  alpha = ((g2 - g1) @ g2) / np.sum((g1 - g2) ** 2)  # 0.8
  np.testing.assert_allclose(_aggregate(mtl.mgda(), np.stack([g1, g2]).astype(np.float32)),
                             alpha * g1 + (1 - alpha) * g2, rtol=1e-5)


def test_mgda_ub_is_the_solver_on_representation_gradients():
  # MGDA-UB: per-task gradients with respect to the shared representation z.
  inputs = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.0, 1.0]])
  shared = jnp.array([[0.3, -0.2], [0.1, 0.4]])
  heads = jnp.array([[1.0, 0.5], [-0.7, 1.2]])  # one linear head per task
  targets = jnp.array([[1.0, -1.0], [0.0, 2.0], [1.0, 1.0]])
  task_losses_fn = lambda z: jnp.mean((z @ heads.T - targets) ** 2, axis=0)
  _, z_grads = mtl.task_gradients(task_losses_fn, inputs @ shared)
  rep_grads = np.asarray(z_grads).reshape(2, -1)
  g1, g2 = rep_grads
  alpha = np.clip(((g2 - g1) @ g2) / np.sum((g1 - g2) ** 2), 0.0, 1.0)
  weights = _min_norm_solver_jit(jnp.asarray(rep_grads))
  np.testing.assert_allclose(weights, [alpha, 1 - alpha], atol=1e-5)


def _min_norm_numpy(gram):
  n = gram.shape[0]
  result = optimize.minimize(lambda w: w @ gram @ w, np.full(n, 1.0 / n),
                             jac=lambda w: 2 * gram @ w, bounds=[(0, 1)] * n, method="SLSQP",
                             tol=1e-14,
                             constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1})
  return result.x


@pytest.mark.parametrize("name,tolerance", [("mgda", 1e-6), ("mgda_projected", 1e-4), ("mgda_frank_wolfe", 2e-3)])
def test_mgda_matches_scipy_min_norm_and_kkt(name, tolerance):
  for seed in range(3):
    grads = _random_grads(seed)
    grads[0] += 1.0  # some hulls miss the origin, some do not.
    gram = grads.astype(np.float64) @ grads.T
    update = _run(name, grads)
    reference = _min_norm_numpy(gram) @ grads
    value, best = update @ update, reference @ reference
    assert value <= best + tolerance * np.trace(gram)
    # KKT: no task improves on the min-norm point: g_i . d >= |d|^2.
    assert np.all(grads @ update >= value - tolerance * np.trace(gram))


def _min_norm_exact(gram):
  """The min-norm weights by enumerating every support set: the best KKT point with weights >= 0."""
  num_tasks = gram.shape[0]
  best, best_weights = np.inf, None
  for size in range(1, num_tasks + 1):
    for support in itertools.combinations(range(num_tasks), size):
      support = list(support)
      system = np.zeros((size + 1, size + 1))
      system[:size, :size] = gram[np.ix_(support, support)]
      system[:size, size] = system[size, :size] = 1.0
      rhs = np.zeros(size + 1)
      rhs[size] = 1.0
      try:
        solution = np.linalg.solve(system, rhs)[:size]
      except np.linalg.LinAlgError:
        continue
      if np.all(solution >= -1e-12):
        weights = np.zeros(num_tasks)
        weights[support] = solution
        if weights @ gram @ weights < best:
          best, best_weights = weights @ gram @ weights, weights
  return best_weights


def _conflicting_jacobians(num_tasks, count=4, dim=24):
  """``[count + 4, T, dim]`` float64: random conflicting Jacobians, then hard cases."""
  rng = np.random.default_rng(num_tasks)
  jacobians = rng.normal(size=(count + 4, num_tasks, dim))
  jacobians[:count, 0] += rng.uniform(0, 6, size=count)[:, None] / np.sqrt(dim)
  jacobians[count, -1] = jacobians[count, 0]                                  # duplicate gradients
  jacobians[count + 1, -1] = 0.3 * jacobians[count + 1, 0] + 0.7 * jacobians[count + 1, 1]  # dependent
  jacobians[count + 2] *= np.logspace(-3, 3, num_tasks)[:, None]              # scales 1e-3 .. 1e3
  jacobians[count + 3, :, num_tasks // 2:] = 0                                # rank < T: 0 may be in the hull
  return jacobians


def test_mgda_default_is_the_exact_min_norm_point():
  """Against an exact enumeration of support sets (float64), for 2 to 10 tasks in float32.

  Three compiles: T = 2, 4, and T = 10 for Jacobians of 3 to 10 tasks padded
  to 10 rows by repeating their first gradient (which leaves the hull, so the
  min-norm point, unchanged).
  """
  padded = [np.concatenate([j, np.repeat(j[:1], 10 - num_tasks, axis=0)])
            for num_tasks in (3, 5, 7, 10) for j in _conflicting_jacobians(num_tasks, count=2)]
  for jacobians in (_conflicting_jacobians(2), _conflicting_jacobians(4), np.stack(padded)):
    weights = jax.jit(jax.vmap(mtl.min_norm_solver))(jnp.asarray(jacobians, jnp.float32))
    for jacobian, w in zip(jacobians, np.asarray(weights, np.float64)):
      exact = _min_norm_exact(jacobian @ jacobian.T) @ jacobian
      assert abs(np.sum(w) - 1) < 1e-6 and np.all(w >= 0)
      # Relative 2e-6, plus float32 rounding of the gradients where the point is ~0 (0 in the hull).
      bound = 2e-6 * np.linalg.norm(exact) + 1e-6 * np.linalg.norm(jacobian, axis=1).max()
      assert np.linalg.norm(w @ jacobian - exact) <= bound, (jacobian.shape, w)


def test_mgda_normalizations():
  grads = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
  # "l2": the solver sees unit gradients -> w = (1/2, 1/2), applied to raw grads.
  np.testing.assert_allclose(_aggregate(mtl.mgda(normalization="l2"), grads), [1.0, 0.5],
                             rtol=1e-5)
  losses = jnp.array([2.0, 1.0])
  np.testing.assert_allclose(_aggregate(mtl.mgda(normalization="loss"), grads,
                                        task_losses=losses), [1.0, 0.5], rtol=1e-5)
  with pytest.raises(ValueError, match="task_losses"):
    _aggregate(mtl.mgda(normalization="loss+"), grads)


# ---------------------------------------------------------------------------
# CAGrad.


def _cagrad_numpy(grads, c, rescale):
  """The reference algorithm (SLSQP on the dual), on the trace-normalised Gram."""
  grads = grads.astype(np.float64)
  num_tasks = grads.shape[0]
  gram = grads @ grads.T
  normalized = gram / (np.trace(gram) / num_tasks)
  mean = np.full(num_tasks, 1.0 / num_tasks)
  radius = c * np.sqrt(mean @ normalized @ mean + 1e-8)
  objective = lambda w: w @ normalized @ mean + radius * np.sqrt(w @ normalized @ w + 1e-8)
  result = optimize.minimize(objective, mean, bounds=[(0, 1)] * num_tasks, method="SLSQP",
                             tol=1e-14, constraints={"type": "eq", "fun": lambda w: 1 - w.sum()})
  w = result.x
  gw = w @ grads
  g0_norm = np.sqrt(mean @ gram @ mean)
  update = grads.mean(0) + c * g0_norm / np.linalg.norm(gw) * gw
  return update / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]


def test_cagrad_matches_scipy_reference():
  for seed in range(3):
    grads = _random_grads(10 + seed)
    expected = _cagrad_numpy(grads, 0.5, rescale=1)
    np.testing.assert_allclose(_run("cagrad", grads), expected, rtol=1e-3,
                               atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("case", ["rank_deficient", "badly_scaled"])
def test_cagrad_reaches_the_slsqp_optimum_on_hard_gram_matrices(case):
  # Ten tasks whose Gram matrix is singular (rank 4) or spans 10^4 in scale: the
  # worst-task improvement min_i g_i . d (the primal objective) matches SLSQP's.
  rng = np.random.default_rng(7)
  if case == "rank_deficient":
    grads = (rng.normal(size=(10, 4)) @ rng.normal(size=(4, 30))).astype(np.float32)
  else:
    grads = (rng.normal(size=(10, 30)) * np.logspace(0, 2, 10)[:, None]).astype(np.float32)
  grads64 = grads.astype(np.float64)
  g0 = grads64.mean(0)
  update = _run("cagrad", grads).astype(np.float64) * 1.25  # undo rescale=1
  expected = _cagrad_numpy(grads, 0.5, rescale=0)
  assert np.linalg.norm(update - g0) <= 0.5 * np.linalg.norm(g0) * (1 + 1e-4)
  scale = np.abs(grads64 @ g0).max()
  assert np.min(grads64 @ update) >= np.min(grads64 @ expected) - 1e-5 * scale


def test_cagrad_worst_task_improvement_beats_the_mean():
  # CAGrad maximises min_i g_i . d in the ball |d - g_0| <= c |g_0| (before rescaling).
  grads = _random_grads(13)
  update = _run("cagrad", grads) * 1.25  # rescale=1 divides by 1 + c^2.
  g0 = grads.mean(0).astype(np.float64)
  assert np.linalg.norm(update - g0) <= 0.5 * np.linalg.norm(g0) * (1 + 1e-4)
  assert np.min(grads @ update) >= np.min(grads @ g0) - 1e-6


def test_cagrad_with_c_zero_is_the_mean():
  grads = _random_grads(3)
  update = _aggregate(mtl.cagrad(0.0, rescale=2), grads)  # every rescale divides by 1.
  np.testing.assert_allclose(update, grads.mean(0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# IMTL-G.


def test_imtl_g_equal_projections_and_libmtl_closed_form():
  grads = _random_grads(4).astype(np.float64)
  update = _run("imtl_g", grads)
  units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
  projections = units @ update
  np.testing.assert_allclose(projections, projections[0], rtol=1e-4)
  # LibMTL / Nash-MTL code: alpha_{2:} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum.
  d = grads[0] - grads[1:]
  u = units[0] - units[1:]
  alpha = grads[0] @ u.T @ np.linalg.inv(d @ u.T)
  alpha = np.concatenate([[1 - alpha.sum()], alpha])
  np.testing.assert_allclose(update, alpha @ grads, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Nash-MTL.


def test_nash_mtl_fixed_point_and_scipy():
  grads = _random_grads(5)
  grads[:, 0] += 2.0  # gradients with a common descent direction.
  gram = grads.astype(np.float64) @ grads.T
  update = _run("nash_mtl", grads)
  weights = np.linalg.lstsq(grads.T.astype(np.float64), update, rcond=None)[0]
  assert np.all(weights > 0)
  np.testing.assert_allclose(weights * (gram @ weights), 1.0, rtol=1e-3)  # g_i . d = 1/alpha_i
  result = optimize.minimize(lambda a: 0.5 * a @ gram @ a - np.sum(np.log(a)), np.ones(3),
                             jac=lambda a: gram @ a - 1 / a, bounds=[(1e-9, None)] * 3,
                             method="L-BFGS-B", tol=1e-14)
  np.testing.assert_allclose(weights, result.x, rtol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(update), np.sqrt(3), rtol=1e-4)  # |d|^2 = T


def test_nash_mtl_orthogonal_closed_form_clipping_and_weight_reuse():
  grads = np.eye(3, 5, dtype=np.float32) * np.array([[1.0], [2.0], [4.0]], np.float32)
  aggregator = mtl.nash_mtl(3, max_norm=1.0, update_weights_every=2)
  state = aggregator.init(None)
  update_fn = jax.jit(aggregator.update)
  update, state = update_fn(jnp.asarray(grads), state)
  np.testing.assert_allclose(state.weights, [1.0, 0.5, 0.25], rtol=1e-5)  # 1 / |g_i|
  # d = (1, 1, 1, 0, 0) has norm sqrt(3) and is clipped to norm 1.
  np.testing.assert_allclose(update, np.array([1.0, 1.0, 1.0, 0.0, 0.0]) / np.sqrt(3),
                             rtol=1e-5, atol=1e-6)
  update, state = update_fn(jnp.asarray(grads * [[1.0], [0.5], [0.5]]), state)  # reused weights
  np.testing.assert_allclose(update, np.array([2.0, 1.0, 1.0, 0.0, 0.0]) / np.sqrt(6),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="built for 3 tasks"):
    aggregator.update(jnp.ones((2, 3)), state)


# ---------------------------------------------------------------------------
# Aligned-MTL.


def _aligned_mtl_numpy(grads, scale_mode="min"):
  """The official ProcrustesSolver / LibMTL's Aligned_MTL, with eigh for torch.symeig."""
  gram = grads @ grads.T
  lam, vec = np.linalg.eigh(gram)
  tol = lam.max() * gram.shape[0] * np.finfo(np.float32).eps
  order = np.argsort(lam)[::-1]
  rank = int(np.sum(lam > tol))
  lam, vec = lam[order][:rank], vec[:, order][:, :rank]
  scale = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}
  balance = np.sqrt(scale[scale_mode]) * (vec @ np.diag(1 / np.sqrt(lam)) @ vec.T)
  return balance.sum(0) @ grads, balance


def test_aligned_mtl_matches_reference_and_aligns():
  grads = _random_grads(6).astype(np.float64)
  expected, balance = _aligned_mtl_numpy(grads)
  np.testing.assert_allclose(_run("aligned_mtl", grads), expected, rtol=1e-3, atol=1e-4)
  aligned = balance @ grads  # orthogonal with equal norms: condition number one.
  lam_min = np.linalg.eigvalsh(grads @ grads.T).min()
  np.testing.assert_allclose(aligned @ aligned.T, lam_min * np.eye(3), atol=1e-8)


def test_aligned_mtl_scale_modes_and_rank_deficiency():
  grads = _random_grads(7)
  for mode in ("median", "rmse"):
    expected, _ = _aligned_mtl_numpy(grads.astype(np.float64), mode)
    np.testing.assert_allclose(_aggregate(mtl.aligned_mtl(scale_mode=mode), grads), expected,
                               rtol=1e-3, atol=1e-4)
  deficient = np.stack([grads[0], grads[1], grads[0] + grads[1]])
  expected, _ = _aligned_mtl_numpy(deficient.astype(np.float64))
  np.testing.assert_allclose(_run("aligned_mtl", deficient), expected, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------
# UPGrad.


def _box_qp_numpy(gram, lower):
  """Exact solution of min v^T G v s.t. v >= lower by enumerating active sets."""
  n = gram.shape[0]
  for active in itertools.product([False, True], repeat=n):
    active = np.array(active)
    v = lower.copy()
    free = ~active
    if free.any():
      v[free] = np.linalg.solve(gram[np.ix_(free, free)],
                                -gram[np.ix_(free, active)] @ lower[active])
    multipliers = gram @ v
    if np.all(v[free] >= lower[free] - 1e-12) and np.all(multipliers[active] >= -1e-12):
      return v
  raise AssertionError("no KKT point found")


def test_upgrad_matches_exact_qp_and_does_not_conflict():
  grads = np.array([[1.0, 0.1, 0.0, 0.0, 0.2], [-0.8, 1.0, 0.2, 0.1, 0.0],
                    [-0.3, -0.9, 1.0, 0.0, 0.0]], np.float64)
  gram = grads @ grads.T
  normalized = gram / np.trace(gram) + 1e-4 * np.eye(3)
  weights = sum(_box_qp_numpy(normalized, np.eye(3)[i] / 3) for i in range(3))
  update = _run("upgrad", grads)
  np.testing.assert_allclose(update, weights @ grads, rtol=1e-4, atol=1e-5)
  assert np.all(grads @ update >= -1e-3 * np.linalg.norm(update))
  assert np.all(weights >= 0)
  assert np.min(grads @ grads.mean(0)) < 0  # the mean itself conflicts here.


def test_upgrad_non_conflicting_is_weighted_mean_and_preference():
  np.testing.assert_allclose(_run("upgrad", NON_CONFLICTING), NON_CONFLICTING.mean(0), rtol=1e-5,
                             atol=1e-6)
  preference = np.array([0.5, 0.25, 0.25], np.float32)
  np.testing.assert_allclose(_aggregate(mtl.upgrad(preference), NON_CONFLICTING),
                             preference @ NON_CONFLICTING, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# GradDrop.


def test_graddrop_keeps_agreeing_elements_and_drops_by_sign():
  grads = np.array([[1.0, -1.0, 2.0, -0.5, 0.0], [3.0, -2.0, -1.0, 0.5, 0.0],
                    [0.5, -0.5, -1.0, 1.0, 0.0]], np.float32)
  aggregator, update_fn = _jitted("graddrop")
  state = aggregator.init(None)
  positive = np.where(grads > 0, grads, 0).sum(0)
  negative = np.where(grads < 0, grads, 0).sum(0)
  results = []
  for _ in range(20):
    update, state = update_fn(jnp.asarray(grads), state)
    update = np.asarray(update)
    np.testing.assert_allclose(update[[0, 1, 4]], grads[:, [0, 1, 4]].sum(0), rtol=1e-6)
    for k in (2, 3):  # mixed signs: all positive parts or all negative parts survive.
      assert np.isclose(update[k], positive[k]) or np.isclose(update[k], negative[k])
    results.append(update)
  assert np.ptp(np.array(results)[:, 2]) > 0  # the mixed-sign element is random.
  np.testing.assert_allclose(_aggregate(mtl.graddrop(KEY, leak=1.0), grads), grads.sum(0),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# float64 gradients (x64): hyperparameters follow the gradients' dtype.


def test_float64_gradients_meet_float64_hyperparameters():
  with jax.enable_x64(True):
    grads = jnp.asarray(NON_CONFLICTING.astype(np.float64) + np.array([0.0, 1e-3, 2e-3])[:, None])
    tight = dict(rtol=1e-13, atol=1e-15)   # float32 hyperparameters are off by ~1e-8
    run = lambda aggregator, grads, state=None: jax.jit(aggregator.update)(grads, state)

    preference = [0.1, 0.3, 0.6]
    update, _ = run(mtl.upgrad(preference=preference), grads)   # crashed in the solver's while_loop
    assert update.dtype == np.float64
    np.testing.assert_allclose(update, np.array(preference) @ grads, **tight)

    update, _ = run(mtl.linear_scalarization([0.1, 0.2, 0.3]), grads)
    assert update.dtype == np.float64
    np.testing.assert_allclose(update, np.array([0.1, 0.2, 0.3]) @ grads, **tight)

    nash = mtl.nash_mtl(3, max_norm=0.0, update_weights_every=2)
    state = nash.init(None)
    assert state.weights.dtype == np.float64
    step = jax.jit(nash.update)
    first, state = step(grads, state)
    second, state = step(grads, state)   # reuses the stored weights
    assert state.weights.dtype == np.float64
    np.testing.assert_allclose(second, first, **tight)

    mixed = np.array([[1.0, 3.0], [-0.7, -0.3]])           # every element has mixed signs
    graddrop = mtl.graddrop(KEY, leak=0.1)
    update, _ = run(graddrop, jnp.asarray(mixed), graddrop.init(None))
    assert update.dtype == np.float64
    keep_positive = mixed[0] + 0.1 * mixed[1]
    keep_negative = 0.1 * mixed[0] + mixed[1]
    for k in range(2):
      assert min(abs(update[k] - keep_positive[k]), abs(update[k] - keep_negative[k])) < 1e-15
