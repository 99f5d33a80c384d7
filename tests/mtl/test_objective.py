"""Tests for metalax.mtl.objective: task losses, layouts, weighting and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import losses
from metalax.mtl import aggregation
from metalax.mtl import conditioning
from metalax.mtl import objective
from metalax.mtl import weighting
from metalax.types import Batch

KEY = jax.random.key(0)
LOSS_FNS = (losses.cross_entropy, losses.squared_error)  # classification, regression


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w0": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
          "w1": jnp.asarray(rng.standard_normal((4, 1)), jnp.float32),
          "shared": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32)}


def _apply(params, inputs):
  """A tiny multi-output model: shared layer, then a 3-way and a 1-d head."""
  h = jnp.tanh(inputs @ params["shared"])
  return (h @ params["w0"], h @ params["w1"])


def _apply_conditioned(params, inputs, task_ids):
  """A task-conditioned model: one output width (3), task 1 reads column 0."""
  outputs = _apply(params, inputs)
  return jnp.where((task_ids == 0)[:, None], outputs[0],
                   jnp.pad(outputs[1], ((0, 0), (0, 2))))


def _data(n, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
  classes = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
  targets = jnp.asarray(rng.standard_normal((n, 1)), jnp.float32)
  return x, classes, targets


def _manual(params, x0, y0, x1, y1):
  return jnp.stack([jnp.mean(losses.cross_entropy(_apply(params, x0)[0], y0)),
                    jnp.mean(losses.squared_error(_apply(params, x1)[1], y1))])


def test_shared_inputs_mixed_classification_and_regression():
  params = _params()
  x, classes, targets = _data(6, 1)
  task_losses_fn = objective.multitask_loss(_apply, LOSS_FNS)
  batch = Batch(inputs=x, labels=(classes, targets))
  expected = _manual(params, x, classes, x, targets)
  np.testing.assert_allclose(task_losses_fn(params, batch), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(task_losses_fn)(params, batch), expected, rtol=1e-6)
  # A stacked [T, n, out] output works too.
  stacked = objective.multitask_loss(
      lambda p, x: jnp.stack([_apply(p, x)[0], jnp.pad(_apply(p, x)[1], ((0, 0), (0, 2)))]),
      (losses.cross_entropy, lambda out, y: losses.squared_error(out[:, :1], y)))
  np.testing.assert_allclose(stacked(params, batch), expected, rtol=1e-6)


@pytest.mark.parametrize("conditioned", [False, True])
def test_one_batch_per_task_with_different_sizes(conditioned):
  params = _params()
  x0, classes, _ = _data(5, 2)
  x1, _, targets = _data(3, 3)
  apply_fn = _apply_conditioned if conditioned else _apply
  loss_fns = LOSS_FNS if not conditioned else (
      losses.cross_entropy, lambda out, y: losses.squared_error(out[:, :1], y))
  task_losses_fn = objective.multitask_loss(apply_fn, loss_fns, conditioned=conditioned)
  batches = (Batch(x0, classes), Batch(x1, targets))
  expected = _manual(params, x0, classes, x1, targets)
  np.testing.assert_allclose(task_losses_fn(params, batches), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(task_losses_fn)(params, batches), expected, rtol=1e-6)


def test_conditioned_model_on_shared_inputs_sees_every_task():
  params = _params()
  x, classes, targets = _data(4, 4)
  seen = []

  def apply_fn(p, inputs, task_ids):
    seen.append((inputs.shape, np.asarray(task_ids).tolist()))
    return _apply_conditioned(p, inputs, task_ids)

  task_losses_fn = objective.multitask_loss(
      apply_fn, (losses.cross_entropy, lambda out, y: losses.squared_error(out[:, :1], y)),
      conditioned=True)
  got = task_losses_fn(params, Batch(x, (classes, targets)))
  np.testing.assert_allclose(got, _manual(params, x, classes, x, targets), rtol=1e-6)
  assert seen == [((8, 4), [0] * 4 + [1] * 4)]  # one pass on the tiled inputs


def test_inputs_of_different_shapes_take_one_pass_per_task():
  params = {"a": jnp.array(2.0), "b": jnp.array(-1.0)}
  images = jnp.ones((3, 2, 2))
  vectors = jnp.arange(8.0).reshape(4, 2)

  def apply_fn(p, inputs):
    feature = jnp.mean(inputs.reshape(inputs.shape[0], -1), axis=1, keepdims=True)
    return (p["a"] * feature, p["b"] * feature)

  task_losses_fn = objective.multitask_loss(apply_fn, (losses.squared_error,) * 2)
  got = task_losses_fn(params, (Batch(images, jnp.zeros((3, 1))), Batch(vectors, jnp.zeros((4, 1)))))
  expected = [4.0, np.mean(np.mean(np.arange(8.0).reshape(4, 2), axis=1) ** 2)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_feeds_task_gradients_and_loss_weightings():
  params = _params()
  x, classes, targets = _data(6, 5)
  batch = Batch(inputs=x, labels=(classes, targets))
  task_losses_fn = objective.multitask_loss(_apply, LOSS_FNS)
  task_losses, task_grads = jax.jit(
      lambda p, b: aggregation.task_gradients(task_losses_fn, p, b))(params, batch)
  for t in range(2):
    grad_t = jax.jit(jax.grad(lambda p, t=t: task_losses_fn(p, batch)[t]))(params)
    for leaf, expected in zip(jax.tree.leaves(task_grads), jax.tree.leaves(grad_t)):
      np.testing.assert_allclose(leaf[t], expected, rtol=1e-5, atol=1e-6)
  # Task 1's loss does not reach task 0's head.
  np.testing.assert_array_equal(task_grads["w0"][1], 0.0)

  static = weighting.static_weighting([0.3, 2.0])
  weighting_params, state = static.init(2)
  objective_fn = objective.multitask_objective(task_losses_fn, static)
  total, (losses_out, weights, _) = objective_fn(
      {"model": params, "weighting": weighting_params}, batch, state)
  np.testing.assert_allclose(losses_out, task_losses, rtol=1e-6)
  np.testing.assert_allclose(total, 0.3 * task_losses[0] + 2.0 * task_losses[1], rtol=1e-6)
  np.testing.assert_allclose(weights, [0.3, 2.0])

  learned = weighting.uncertainty_weighting(["classification", "regression"])
  weighting_params, state = learned.init(2)
  objective_fn = objective.multitask_objective(task_losses_fn, learned)
  grads = jax.jit(jax.grad(lambda p: objective_fn(p, batch, state)[0]))(
      {"model": params, "weighting": weighting_params})
  assert float(jnp.max(jnp.abs(grads["weighting"]["log_variances"]))) > 0
  assert float(jnp.max(jnp.abs(grads["model"]["shared"]))) > 0


def test_multitask_loss_errors_say_what_was_expected():
  params = _params()
  x, classes, targets = _data(4, 6)
  task_losses_fn = objective.multitask_loss(_apply, LOSS_FNS)
  with pytest.raises(ValueError, match="sequence of 2 label arrays"):
    task_losses_fn(params, Batch(x, classes))
  with pytest.raises(ValueError, match="3 batches for 2 tasks"):
    task_losses_fn(params, (Batch(x, classes),) * 3)
  with pytest.raises(ValueError, match="returned 2 outputs, expected one per task"):
    objective.multitask_loss(_apply, LOSS_FNS * 2)(params, Batch(x, (classes, targets) * 2))
  with pytest.raises(ValueError, match="per-example losses"):
    objective.multitask_loss(_apply, (lambda o, y: jnp.mean(losses.cross_entropy(o, y)),
                                      losses.squared_error))(params, Batch(x, (classes, targets)))
  with pytest.raises(ValueError, match="conditioned=True"):
    objective.multitask_loss(lambda p, x: x, LOSS_FNS)(params, Batch(x, (classes, targets)))
  with pytest.raises(ValueError, match="non-empty"):
    objective.multitask_loss(_apply, ())


def test_standardizer_uses_training_statistics_and_inverts():
  rng = np.random.default_rng(7)
  train = jnp.asarray(rng.normal([100.0, -3.0], [20.0, 0.01], (500, 2)), jnp.float32)
  test = jnp.asarray(rng.normal([100.0, -3.0], [20.0, 0.01], (50, 2)), jnp.float32)
  standardizer = objective.fit_standardizer(train)
  np.testing.assert_allclose(standardizer.mean, np.mean(np.asarray(train, np.float64), 0),
                             rtol=1e-5)
  np.testing.assert_allclose(standardizer.std, np.std(np.asarray(train, np.float64), 0),
                             rtol=1e-4)
  scaled = objective.standardize(standardizer, train)
  np.testing.assert_allclose(jnp.mean(scaled, 0), 0.0, atol=1e-3)
  np.testing.assert_allclose(jnp.std(scaled, 0), 1.0, rtol=1e-3)
  np.testing.assert_allclose(
      objective.unstandardize(standardizer, objective.standardize(standardizer, test)), test,
      rtol=1e-5)
  # Squared error on the standardized scale is the original divided by std^2.
  predictions = test + 0.5
  scaled_error = losses.squared_error(objective.standardize(standardizer, predictions)[:, :1],
                                      objective.standardize(standardizer, test)[:, :1])
  np.testing.assert_allclose(scaled_error * standardizer.std[0] ** 2, 0.25, rtol=1e-3)
  # A constant target does not divide by zero; class labels are rejected.
  constant = objective.fit_standardizer(jnp.full((4,), 2.0))
  assert np.all(np.isfinite(objective.standardize(constant, jnp.array([2.0, 3.0]))))
  with pytest.raises(ValueError, match="float regression targets"):
    objective.fit_standardizer(jnp.array([0, 1, 2]))


def test_task_descriptors():
  task_ids = jnp.array([2, 0, 1])
  np.testing.assert_array_equal(objective.one_hot_descriptors(task_ids, 3), np.eye(3)[[2, 0, 1]])
  assert objective.one_hot_descriptors(1, 3).tolist() == [0.0, 1.0, 0.0]
  table = jnp.arange(6.0).reshape(3, 2)
  np.testing.assert_array_equal(objective.task_descriptors(task_ids, table), table[task_ids])
  with pytest.raises(ValueError, match=r"\[T, d\]"):
    objective.task_descriptors(task_ids, jnp.ones(3))
  with pytest.raises(ValueError, match="int scalar or vector"):
    objective.one_hot_descriptors(jnp.array([0.5]), 3)


def test_task_conditioned_linen_model_trains_through_multitask_loss():
  class Conditioned(nn.Module):
    @nn.compact
    def __call__(self, inputs, task_ids):
      z = objective.one_hot_descriptors(task_ids, 2)
      h = nn.relu(conditioning.AdditiveConditioning(8)(inputs, z))
      h = conditioning.FiLM()(h, z)
      return conditioning.MultiHead(num_tasks=2, num_outputs=3)(h, task_ids)

  model = Conditioned()
  x, classes, targets = _data(8, 8)
  batch = Batch(x, (classes, targets))
  params = model.init(KEY, x, jnp.zeros((8,), jnp.int32))["params"]
  task_losses_fn = objective.multitask_loss(
      lambda p, x, t: model.apply({"params": p}, x, t),
      (losses.cross_entropy, lambda out, y: losses.squared_error(out[:, :1], y)),
      conditioned=True)

  @jax.jit
  def step(params):
    task_losses, grads = jax.value_and_grad(lambda p: jnp.sum(task_losses_fn(p, batch)))(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), task_losses

  _, first = step(params)
  for _ in range(20):
    params, last = step(params)
  assert float(jnp.sum(last)) < 0.5 * float(jnp.sum(first))
