"""Tests for metalax.mtl.weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalax import mtl

LOSSES = jnp.array([2.0, 0.5, 1.0])


def test_equal_and_static_weighting():
  weighting = mtl.equal_weighting()
  params, state = weighting.init(3)
  loss, (weights, _) = weighting.loss(params, LOSSES, state)
  np.testing.assert_allclose(loss, 3.5)
  np.testing.assert_allclose(weights, [1.0, 1.0, 1.0])
  weighting = mtl.static_weighting([1.0, 2.0, 0.0])
  params, state = weighting.init(3)
  loss, (weights, _) = jax.jit(weighting.loss)(params, LOSSES, state)
  np.testing.assert_allclose(loss, 3.0)
  with pytest.raises(ValueError, match="num_tasks=2"):
    weighting.init(2)
  with pytest.raises(ValueError, match=r"shape \[3\]"):
    weighting.loss(params, jnp.ones(2), state)


def test_loss_gradient_only_through_task_losses():
  weighting = mtl.static_weighting([1.0, 2.0, 3.0])
  params, state = weighting.init(3)
  grad = jax.grad(lambda losses: weighting.loss(params, losses, state)[0])(LOSSES)
  np.testing.assert_allclose(grad, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("task_types,factors", [
    (None, [0.5, 0.5, 0.5]),
    (("regression", "classification", "regression"), [0.5, 1.0, 0.5]),
])
def test_uncertainty_weighting_forms_and_gradients(task_types, factors):
  weighting = mtl.uncertainty_weighting(task_types, init_log_variance=0.3)
  params, state = weighting.init(3)
  s = np.full(3, 0.3)
  factors = np.array(factors)
  loss, (weights, _) = weighting.loss(params, LOSSES, state)
  expected = np.sum(factors * np.exp(-s) * np.asarray(LOSSES) + 0.5 * s)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(weights, factors * np.exp(-s), rtol=1e-6)
  grads = jax.grad(lambda p: weighting.loss(p, LOSSES, state)[0])(params)
  np.testing.assert_allclose(grads["log_variances"],
                             -factors * np.exp(-s) * np.asarray(LOSSES) + 0.5, rtol=1e-5)


def test_uncertainty_weighting_trains_to_the_optimum_with_optax():
  # Minimising over s alone: e^s = L (regression) and e^s = 2 L (classification).
  weighting = mtl.uncertainty_weighting(["regression", "classification", "regression"])
  params, state = weighting.init(3)
  optimizer = optax.adam(0.1)
  opt_state = optimizer.init(params)

  def step(carry, _):
    params, opt_state = carry
    grads = jax.grad(lambda p: weighting.loss(p, LOSSES, state)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, opt_state), length=400)
  np.testing.assert_allclose(jnp.exp(params["log_variances"]), [2.0, 1.0, 1.0], rtol=1e-2)


def test_uncertainty_weighting_rejects_unknown_type():
  with pytest.raises(ValueError, match="regression"):
    mtl.uncertainty_weighting(["regression", "ranking"])


def _dwa_numpy(history, temperature):
  """MTAN / LibMTL: lambda_i(k) = T softmax(L(k-1) / L(k-2) / temp), 1 for k < 2."""
  num_tasks = history.shape[1]
  weights = []
  for k in range(len(history)):
    if k < 2:
      weights.append(np.ones(num_tasks))
    else:
      ratio = history[k - 1] / history[k - 2]
      e = np.exp(ratio / temperature)
      weights.append(num_tasks * e / e.sum())
  return np.array(weights)


def test_dynamic_weight_average_matches_numpy_per_call():
  history = np.array([[1.0, 2.0, 3.0], [0.8, 1.9, 2.0], [0.5, 1.9, 1.5], [0.4, 1.0, 1.4]])
  weighting = mtl.dynamic_weight_average(2.0)
  params, state = weighting.init(3)
  loss_fn = jax.jit(weighting.loss)
  for k, losses in enumerate(history):
    loss, (weights, state) = loss_fn(params, jnp.asarray(losses, jnp.float32), state)
    expected = _dwa_numpy(history, 2.0)[k]
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    np.testing.assert_allclose(loss, expected @ losses, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(weights), 3.0, rtol=1e-6)


def test_dynamic_weight_average_epochs_average_the_steps():
  steps = np.array([[1.0, 2.0], [3.0, 2.0],      # epoch 0, mean [2, 2]
                    [1.0, 2.0], [1.0, 1.0],      # epoch 1, mean [1, 1.5]
                    [5.0, 5.0], [5.0, 5.0]])     # epoch 2 uses epochs 0 and 1
  weighting = mtl.dynamic_weight_average(2.0, steps_per_epoch=2)
  params, state = weighting.init(2)
  all_weights = []
  for losses in steps:
    _, (weights, state) = weighting.loss(params, jnp.asarray(losses, jnp.float32), state)
    all_weights.append(np.asarray(weights))
  expected = _dwa_numpy(np.array([[2.0, 2.0], [1.0, 1.5], [5.0, 5.0]]), 2.0)[2]
  np.testing.assert_allclose(all_weights[:4], np.ones((4, 2)))
  np.testing.assert_allclose(all_weights[4], expected, rtol=1e-5)
  np.testing.assert_allclose(all_weights[5], expected, rtol=1e-5)
  assert int(state.num_epochs) == 3


def test_random_loss_weighting_is_softmax_of_normals():
  key = jax.random.key(3)
  weighting = mtl.random_loss_weighting(key)
  params, state = weighting.init(3)
  loss_fn = jax.jit(weighting.loss)
  loss, (weights, state) = loss_fn(params, LOSSES, state)
  _, sample_key = jax.random.split(key)
  expected = jax.nn.softmax(jax.random.normal(sample_key, (3,)))
  np.testing.assert_allclose(weights, expected, rtol=1e-6)
  np.testing.assert_allclose(loss, expected @ LOSSES, rtol=1e-6)
  _, (weights_2, _) = loss_fn(params, LOSSES, state)
  assert not np.allclose(weights, weights_2)  # a new draw every call.


def _gradnorm_numpy(weights, grad_norms, losses, initial_losses, alpha):
  norms = weights * grad_norms
  rates = losses / initial_losses
  rates = rates / rates.mean()
  target = norms.mean() * rates**alpha
  loss = np.abs(norms - target).sum()
  # d/dw_i: sign(G_i - target_i) * grad_norms_i (target constant).
  return loss, np.sign(norms - target) * grad_norms


def test_gradnorm_loss_gradient_and_projection():
  weighting = mtl.gradnorm(alpha=1.5)
  assert weighting.requires == ("task_gradient_norms",)
  params, state = weighting.init(3)
  initial = jnp.array([2.0, 1.0, 4.0])
  grad_norms = jnp.array([1.0, 0.2, 3.0])
  # First call: r_i = 1, L_i(0) recorded; total = sum_i w_i L_i + L_grad.
  total, (weights, state) = weighting.loss(params, initial, state, task_gradient_norms=grad_norms)
  first_balance, _ = _gradnorm_numpy(np.ones(3), np.asarray(grad_norms), np.asarray(initial), np.asarray(initial), 1.5)
  np.testing.assert_allclose(total, 7.0 + first_balance, rtol=1e-6)
  np.testing.assert_allclose(state.initial_losses, initial)

  params = {"weights": jnp.array([0.5, 1.5, 1.0])}
  losses = jnp.array([1.0, 0.9, 1.0])
  objective = lambda p, losses: weighting.loss(p, losses, state, task_gradient_norms=grad_norms)[0]
  total, grads = jax.value_and_grad(objective)(params, losses)
  expected, expected_grads = _gradnorm_numpy(np.array([0.5, 1.5, 1.0]), np.asarray(grad_norms),
                                             np.asarray(losses), np.asarray(initial), 1.5)
  np.testing.assert_allclose(total, np.dot([0.5, 1.5, 1.0], losses) + expected, rtol=1e-5)
  np.testing.assert_allclose(grads["weights"], expected_grads, rtol=1e-5)
  # The task losses reach the model only through the (constant) weights.
  np.testing.assert_allclose(jax.grad(objective, argnums=1)(params, losses), [0.5, 1.5, 1.0], rtol=1e-6)
  renormalized = weighting.project({"weights": jnp.array([1.0, 2.0, 3.0])})
  np.testing.assert_allclose(renormalized["weights"], [0.5, 1.0, 1.5])
  with pytest.raises(ValueError, match="task_gradient_norms"):
    weighting.loss(params, losses, state)
  with pytest.raises(ValueError, match=r"shape \(3,\)"):
    weighting.loss(params, losses, state, task_gradient_norms=jnp.ones(2))


def test_gradnorm_with_task_gradients_end_to_end():
  # Two linear-regression tasks sharing a last layer W; the balance loss uses the
  # per-task gradient norms at W from one vectorised pass.
  inputs = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  targets = jnp.array([[1.0, 10.0], [2.0, -10.0], [3.0, 0.0]])

  def task_losses_fn(w):
    return jnp.mean((inputs @ w - targets) ** 2, axis=0)  # [2]

  weighting = mtl.gradnorm()
  params, state = weighting.init(2)
  w = jnp.zeros((2, 2))
  task_losses, task_grads = mtl.task_gradients(task_losses_fn, w)
  grad_norms = mtl.task_gradient_norms(task_grads)
  expected = [np.linalg.norm(jax.grad(lambda w, t=t: task_losses_fn(w)[t])(w)) for t in range(2)]
  np.testing.assert_allclose(grad_norms, expected, rtol=1e-6)

  grads, _ = jax.grad(lambda p: weighting.loss(p, task_losses, state, task_gradient_norms=grad_norms),
                      has_aux=True)(params)
  # At step 0 all rates are 1: the larger-norm task's weight is pushed down.
  larger = int(np.argmax(grad_norms))
  assert grads["weights"][larger] > 0 > grads["weights"][1 - larger]


def _min_norm_two(g1, g2):
  """The exact two-task MGDA weights: gamma = clip((g2 - g1).g2 / |g1 - g2|^2, 0, 1)."""
  gamma = np.clip(np.dot(g2 - g1, g2) / np.dot(g1 - g2, g1 - g2), 0.0, 1.0)
  return np.array([gamma, 1.0 - gamma])


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_ub_weights_are_the_min_norm_point(normalization):
  weighting = mtl.mgda_ub(normalization)
  assert weighting.requires == ("representation_gradients",)
  params, state = weighting.init(2)
  losses = jnp.array([2.0, 0.5])
  z_grads = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[0.3, 2.0], [0.0, 1.0]]])  # [T, n, d]
  total, (weights, _) = weighting.loss(params, losses, state, representation_gradients=z_grads)
  flat = np.asarray(z_grads).reshape(2, -1)
  norms = np.linalg.norm(flat, axis=1)
  scale = {"none": np.ones(2), "l2": norms, "loss": np.asarray(losses), "loss+": np.asarray(losses) * norms}
  expected = _min_norm_two(*(flat / scale[normalization][:, None]))
  np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(total, expected @ np.asarray(losses), rtol=1e-5)
  grad = jax.grad(lambda x: weighting.loss(params, x, state, representation_gradients=z_grads)[0])(losses)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)  # weights are constants
  with pytest.raises(ValueError, match="representation_gradients"):
    weighting.loss(params, losses, state)
  with pytest.raises(ValueError, match="normalization"):
    mtl.mgda_ub("max")


def test_every_weighting_ignores_extra_arguments():
  for weighting in (mtl.equal_weighting(), mtl.static_weighting([1.0, 1.0, 1.0]), mtl.uncertainty_weighting(),
                    mtl.dynamic_weight_average(), mtl.random_loss_weighting(jax.random.key(0))):
    params, state = weighting.init(3)
    plain = weighting.loss(params, LOSSES, state)[0]
    np.testing.assert_allclose(weighting.loss(params, LOSSES, state, task_gradient_norms=jnp.ones(3))[0], plain)
    assert weighting.project is None and weighting.requires == ()
