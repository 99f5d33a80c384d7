"""Reptile's pseudo-gradient and iMAML's implicit meta-gradient against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax.types import Batch, Episode


def linear(params, inputs):
  return inputs @ params["w"]


def linear_episode(key, dim=3, num_shots=6, num_queries=8):
  keys = jax.random.split(key, 3)
  w = jax.random.normal(keys[0], (dim, 1))
  xs = jax.random.normal(keys[1], (num_shots, dim))
  xq = jax.random.normal(keys[2], (num_queries, dim))
  return Episode(Batch(xs, xs @ w + 0.1), Batch(xq, xq @ w - 0.1))


def test_reptile_pseudo_gradient_is_params_minus_adapted():
  episode = linear_episode(jax.random.key(0))
  params = {"w": jnp.array([[0.3], [-0.2], [0.5]])}
  learner = meta.reptile(linear, metalax.losses.squared_error, inner_lr=0.05, num_steps=3)
  meta_params = learner.init(params)
  w = params["w"]
  for _ in range(3):
    w = w - 0.05 * jax.grad(lambda w: jnp.mean((episode.support.inputs @ w - episode.support.labels) ** 2))(w)
  grads, aux = jax.grad(learner.loss, has_aux=True)(meta_params, episode)
  np.testing.assert_allclose(grads["params"]["w"], params["w"] - w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux["loss"], jnp.mean((episode.query.inputs @ w - episode.query.labels) ** 2),
                             rtol=1e-5)


def test_reptile_with_outer_sgd_one_is_the_mean_of_adapted_params():
  keys = jax.random.split(jax.random.key(1), 4)
  episodes = jax.tree.map(lambda *xs: jnp.stack(xs), *[linear_episode(k) for k in keys])
  params = {"w": jnp.zeros((3, 1))}
  learner = meta.reptile(linear, metalax.losses.squared_error, inner_lr=0.05, num_steps=2)
  optimizer = optax.sgd(1.0)
  meta_params = learner.init(params)
  new, _, _ = meta.train_step(learner, optimizer)(meta_params, optimizer.init(meta_params), episodes)
  adapted = jax.vmap(learner.adapt, in_axes=(None, 0))(meta_params, episodes.support)
  np.testing.assert_allclose(new["params"]["w"], adapted["w"].mean(0), rtol=1e-5, atol=1e-7)


def test_imaml_meta_gradient_matches_the_closed_form_of_the_proximal_problem():
  """Inner optimum of L_s(phi) + reg/2 ||phi - w||^2 for least squares is linear in w."""
  reg = 2.0
  episode = linear_episode(jax.random.key(2))
  w = np.array([[0.3], [-0.2], [0.5]])
  learner = meta.imaml(linear, metalax.losses.squared_error, inner_lr=0.05, num_steps=400, reg=reg,
                       cg_steps=3)
  with jax.enable_x64(True):
    episode = jax.tree.map(lambda x: x.astype(jnp.float64), episode)
    meta_params = learner.init({"w": jnp.asarray(w)})
    grads = jax.jit(jax.grad(lambda mp: learner.loss(mp, episode)[0]))(meta_params)
    adapted = learner.adapt(meta_params, episode.support)

  xs, ys = np.asarray(episode.support.inputs), np.asarray(episode.support.labels)
  xq, yq = np.asarray(episode.query.inputs), np.asarray(episode.query.labels)
  hessian = 2 / len(xs) * xs.T @ xs
  system = hessian + reg * np.eye(3)
  phi = np.linalg.solve(system, 2 / len(xs) * xs.T @ ys + reg * w)
  np.testing.assert_allclose(adapted["w"], phi, rtol=1e-6)
  query_grad = 2 / len(xq) * xq.T @ (xq @ phi - yq)
  expected = reg * np.linalg.solve(system, query_grad)  # (d phi / d w)^T grad = reg * system^-1 grad
  np.testing.assert_allclose(grads["params"]["w"], expected, rtol=1e-6)


def test_imaml_backward_stores_nothing_of_the_inner_loop():
  apply_fn = metalax.models.from_linen(metalax.models.MLP(features=(32, 32), num_outputs=1))
  params = metalax.models.MLP(features=(32, 32), num_outputs=1).init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  episodes = metalax.data.sample_sinusoid(jax.random.key(3), 4, 10, 10)
  temp_bytes = []
  for num_steps in (5, 50):
    learner = meta.imaml(apply_fn, metalax.losses.squared_error, inner_lr=0.01, num_steps=num_steps, reg=1.0)
    grad_fn = jax.jit(jax.grad(lambda mp: meta.batch_loss(learner)(mp, episodes)[0]))
    temp_bytes.append(grad_fn.lower(learner.init(params)).compile().memory_analysis().temp_size_in_bytes)
  assert temp_bytes[1] <= temp_bytes[0] * 1.1


@pytest.mark.parametrize("kwargs, match", [
    (dict(reg=0.0), "reg"), (dict(reg=1.0, cg_steps=0), "cg_steps"), (dict(reg=1.0, damping=-1.0), "damping")])
def test_imaml_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    meta.imaml(linear, metalax.losses.squared_error, inner_lr=0.1, num_steps=1, **kwargs)


def test_conjugate_gradient_has_the_iterates_of_jax_cg():
  from metalax.meta import inner
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 5))
  system = jnp.asarray(a @ a.T + 0.5 * np.eye(5))
  matvec = lambda v: {"x": system[:3, :3] @ v["x"] + system[:3, 3:] @ v["y"],
                      "y": system[3:, :3] @ v["x"] + system[3:, 3:] @ v["y"]}
  b = {"x": jnp.asarray(rng.normal(size=3)), "y": jnp.asarray(rng.normal(size=2))}
  for steps in (1, 2, 4):
    ours = jax.jit(lambda b: inner.conjugate_gradient(matvec, b, steps))(b)
    reference, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=0.0, maxiter=steps)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # An exactly solved system (the residual reaches 0) keeps its solution: no 0/0.
  solved = inner.conjugate_gradient(lambda v: jax.tree.map(lambda x: 2.0 * x, v), b, 3)
  for x, y in zip(jax.tree.leaves(solved), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y / 2.0, rtol=1e-6)
