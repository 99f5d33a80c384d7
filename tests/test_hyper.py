"""Hypergradients (unrolled and implicit) against float64 finite differences and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import hyper
from metalax.losses import squared_error
from metalax.types import Batch


def mlp(params, inputs):
  return jnp.tanh(inputs @ params["hidden"]["w"] + params["hidden"]["b"]) @ params["head"]["w"] + params["head"]["b"]


def data(dtype, n=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2 * n, 2))
  y = np.sin(x[:, :1]) + 0.5 * x[:, 1:]
  train = Batch(jnp.asarray(x[:n], dtype), jnp.asarray(y[:n], dtype))
  validation = Batch(jnp.asarray(x[n:], dtype), jnp.asarray(y[n:], dtype))
  return train, validation


def test_unrolled_hypergradient_matches_finite_differences(finite_difference_grad):
  with jax.enable_x64():
    rng = np.random.default_rng(1)
    params = {"hidden": {"w": jnp.asarray(rng.normal(size=(2, 3))), "b": jnp.zeros(3)},
              "head": {"w": jnp.asarray(rng.normal(size=(3, 1))), "b": jnp.zeros(1)}}
    hyperparams = jax.tree.map(lambda x: x.astype(jnp.float64),
                               hyper.layer_hyperparameters(params, learning_rate=0.2, weight_decay=0.05))
    train, validation = data(jnp.float64)
    steps = 6
    minibatches = jax.tree.map(lambda x: jnp.broadcast_to(x, (steps,) + x.shape), train)

    @jax.jit
    def run(hyperparams):
      plain = hyper.unrolled_hypergradient(mlp, squared_error, num_steps=steps)(hyperparams, params, train,
                                                                                validation)
      remat = hyper.unrolled_hypergradient(mlp, squared_error, num_steps=steps, remat=True)(
          hyperparams, params, train, validation)
      per_step = hyper.unrolled_hypergradient(mlp, squared_error, num_steps=steps, minibatches=True)(
          hyperparams, params, minibatches, validation)
      return plain, remat[1], per_step[1]

    (loss, grads, trained), remat_grads, per_step_grads = run(hyperparams)
    train_fn = hyper.sgd_training(mlp, squared_error, num_steps=steps)

    def validation_loss(hyperparams):
      trained = train_fn(hyperparams, params, train)
      return jnp.mean(squared_error(mlp(trained, validation.inputs), validation.labels))

    expected = finite_difference_grad(validation_loss, hyperparams, eps=1e-6)
    np.testing.assert_allclose(loss, validation_loss(hyperparams), rtol=1e-12)
    for got in (grads, remat_grads, per_step_grads):
      jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-9), got, expected)
    assert all(abs(float(g)) > 1e-6 for g in jax.tree.leaves(grads))


def test_implicit_hypergradient_matches_ridge_closed_form():
  """Ridge regression: w*(wd) in closed form, so dL_val / d log wd by finite differences of exact optima."""
  with jax.enable_x64():
    train, validation = data(jnp.float64, n=10, seed=2)
    params = {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}
    hyperparams = jax.tree.map(lambda x: x.astype(jnp.float64),
                               hyper.layer_hyperparameters(params, learning_rate=0.1, weight_decay=0.3))
    x, y = np.asarray(train.inputs), np.asarray(train.labels)
    xv, yv = np.asarray(validation.inputs), np.asarray(validation.labels)
    n = len(x)

    def exact_validation_loss(log_wd_w, log_wd_b):
      # Minimise mean (x w + b - y)^2 + wd_w / 2 ||w||^2 + wd_b / 2 b^2: (2 A^T A / n + D) theta = 2 A^T y / n.
      a = np.concatenate([x, np.ones((n, 1))], axis=1)
      d = np.diag([np.exp(log_wd_w)] * 2 + [np.exp(log_wd_b)])
      theta = np.linalg.solve(2 * a.T @ a / n + d, 2 * a.T @ y / n)
      return np.mean((xv @ theta[:2] + theta[2] - yv) ** 2)

    hypergradient = jax.jit(hyper.implicit_hypergradient(squared_error_model, squared_error, num_steps=2000,
                                                         inner_lr=0.2, cg_steps=10))
    loss, grads, trained = hypergradient(hyperparams, params, train, validation)
    log_w, log_b = float(hyperparams["log_weight_decay"]["w"]), float(hyperparams["log_weight_decay"]["b"])
    eps = 1e-6
    expected_w = (exact_validation_loss(log_w + eps, log_b) - exact_validation_loss(log_w - eps, log_b)) / (2 * eps)
    expected_b = (exact_validation_loss(log_w, log_b + eps) - exact_validation_loss(log_w, log_b - eps)) / (2 * eps)
    np.testing.assert_allclose(loss, exact_validation_loss(log_w, log_b), rtol=1e-8)
    np.testing.assert_allclose(grads["log_weight_decay"]["w"], expected_w, rtol=1e-5)
    np.testing.assert_allclose(grads["log_weight_decay"]["b"], expected_b, rtol=1e-5)
    # A learning rate does not move the optimum.
    assert all(float(g) == 0 for g in jax.tree.leaves(grads["log_learning_rate"]))


def squared_error_model(params, inputs):
  return inputs @ params["w"] + params["b"]


def test_layer_hyperparameters_and_errors():
  params = {"a": {"w": jnp.ones((2, 2))}, "b": {"w": jnp.ones(2), "c": jnp.ones(1)}}
  layered = hyper.layer_hyperparameters(params, learning_rate=0.5)
  assert set(layered["log_learning_rate"]) == {"a", "b"}
  np.testing.assert_allclose(layered["log_learning_rate"]["a"], np.log(0.5), rtol=1e-6)
  assert jax.tree.structure(hyper.layer_hyperparameters(params, per="leaf")["log_weight_decay"]) == \
      jax.tree.structure(params)
  assert hyper.layer_hyperparameters(params, per="global")["log_weight_decay"].shape == ()
  with pytest.raises(ValueError, match="per must be"):
    hyper.layer_hyperparameters(params, per="block")
  with pytest.raises(ValueError, match="weight_decay"):
    hyper.layer_hyperparameters(params, weight_decay=0.0)
  with pytest.raises(ValueError, match="cg_steps"):
    hyper.implicit_hypergradient(squared_error_model, squared_error, num_steps=3, cg_steps=0)
  train, _ = data(jnp.float32)
  with pytest.raises(ValueError, match="leading"):
    hyper.sgd_training(squared_error_model, squared_error, num_steps=3, minibatches=True)(
        hyper.layer_hyperparameters({"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}),
        {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}, train)
