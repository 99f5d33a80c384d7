"""Bayesian MAML: SVGD against a direct NumPy transcription on a linear model, M = 1 against MAML."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax.types import Batch, Episode

LR, PRIOR = 0.1, 0.5


def numpy_svgd_direction(x, g):
  """Liu & Wang's reference ``svgd_kernel`` and update, written out."""
  m = x.shape[0]
  sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  h2 = 0.5 * np.median(sq) / np.log(m + 1)
  k = np.exp(-sq / (2 * h2))
  phi = np.zeros_like(x)
  for i in range(m):
    for j in range(m):
      phi[i] += k[j, i] * g[j] + (x[i] - x[j]) / h2 * k[j, i]
  return phi / m


def linear(params, inputs):
  return inputs @ params["w"] + params["b"]


def episode():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 1))
  xs, xq = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
  return Episode(Batch(jnp.asarray(xs, jnp.float32), jnp.asarray(xs @ w, jnp.float32)),
                 Batch(jnp.asarray(xq, jnp.float32), jnp.asarray(xq @ w + 0.1, jnp.float32)))


def numpy_step(w, b, x, y):
  """One SVGD step of particles (w [M, 3, 1], b [M, 1]) on mean squared error + the Gaussian prior."""
  residual = np.einsum("nd,mdo->mno", x, w) + b[:, None, :] - y[None]
  grad_w = 2 / len(x) * np.einsum("nd,mno->mdo", x, residual) + PRIOR * w
  grad_b = 2 / len(x) * residual.sum(1) + PRIOR * b
  flat = np.concatenate([b, w.reshape(len(w), -1)], axis=1)        # leaves in tree order: b, w
  flat_grads = np.concatenate([grad_b, grad_w.reshape(len(w), -1)], axis=1)
  flat = flat + LR * numpy_svgd_direction(flat, -flat_grads)
  return flat[:, 1:].reshape(w.shape), flat[:, :1]


def test_svgd_direction_matches_numpy():
  rng = np.random.default_rng(1)
  x, g = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  x32, g32 = jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32)
  run = jax.jit(lambda x, g: (meta.svgd_direction(x, g), meta.svgd_direction(x[:1], g[:1]),
                              meta.svgd_direction(jnp.repeat(x[:1], 3, 0), g[:3])))
  direction, single, same = run(x32, g32)
  np.testing.assert_allclose(direction, numpy_svgd_direction(x, g), rtol=1e-4, atol=1e-6)
  # One particle: plain gradient ascent; identical particles share the mean gradient.
  np.testing.assert_allclose(single, g[:1], rtol=1e-6)
  np.testing.assert_allclose(same, np.repeat(g[:3].mean(0, keepdims=True), 3, 0), rtol=1e-5)


def test_adapt_and_chaser_loss_match_numpy_svgd_on_a_linear_model():
  ep = episode()
  learner = meta.bmaml(linear, metalax.losses.squared_error, num_particles=3, num_steps=2, inner_lr=LR,
                       prior_precision=PRIOR, leader_steps=1, init_noise=0.5)
  meta_params = learner.init({"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,))})
  run = jax.jit(lambda p, e: (learner.adapt(p, e.support), learner.loss(p, e)))
  adapted, (objective, aux) = run(meta_params, ep)

  w, b = (np.asarray(meta_params["particles"][k], np.float64) for k in ("w", "b"))
  xs, ys = np.asarray(ep.support.inputs, np.float64), np.asarray(ep.support.labels, np.float64)
  xq, yq = np.asarray(ep.query.inputs, np.float64), np.asarray(ep.query.labels, np.float64)
  for _ in range(2):
    w, b = numpy_step(w, b, xs, ys)
  np.testing.assert_allclose(adapted["w"], w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(adapted["b"], b, rtol=1e-4, atol=1e-5)
  leader_w, leader_b = numpy_step(w, b, np.concatenate([xs, xq]), np.concatenate([ys, yq]))
  np.testing.assert_allclose(objective, ((w - leader_w) ** 2).sum() + ((b - leader_b) ** 2).sum(), rtol=1e-3)
  # aux["loss"]: the ensemble's negative log predictive with squared error as the negative log-likelihood.
  errors = ((np.einsum("nd,mdo->mno", xq, w) + b[:, None, :] - yq[None]) ** 2)[..., 0]
  expected = -np.mean(np.log(np.mean(np.exp(-errors), 0)))
  np.testing.assert_allclose(aux["loss"], expected, rtol=1e-4)


def test_one_particle_predictive_is_maml_with_a_prior_and_chunks_agree():
  episodes = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), episode())
  params = {"w": jnp.array([[0.3], [-0.2], [0.5]]), "b": jnp.zeros((1,))}
  one = meta.bmaml(linear, metalax.losses.squared_error, num_particles=1, num_steps=2, inner_lr=LR,
                   objective="predictive")
  reference = meta.maml(linear, metalax.losses.squared_error, num_steps=2, inner_lr=LR)
  optimizer = optax.sgd(0.1)

  @jax.jit
  def run(params, episodes):
    bayes = jax.value_and_grad(meta.batch_loss(one), has_aux=True)(one.init([params]), episodes)
    plain = jax.value_and_grad(meta.batch_loss(reference), has_aux=True)(reference.init(params), episodes)
    many = meta.bmaml(linear, metalax.losses.squared_error, num_particles=3, num_steps=1, inner_lr=LR)
    state = many.init(params)
    whole = meta.train_step(many, optimizer)(state, optimizer.init(state), episodes)[0]
    chunked = meta.train_step(many, optimizer, tasks_per_chunk=1)(state, optimizer.init(state), episodes)[0]
    return bayes, plain, whole, chunked

  ((bayes_loss, _), bayes_grads), ((plain_loss, _), plain_grads), whole, chunked = run(params, episodes)
  # One particle: its log predictive is minus its loss, and SVGD is gradient descent.
  np.testing.assert_allclose(bayes_loss, plain_loss, rtol=1e-5)
  for k in ("w", "b"):
    np.testing.assert_allclose(bayes_grads["particles"][k][0], plain_grads["params"][k], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(whole["particles"][k], chunked["particles"][k], rtol=1e-5, atol=1e-6)


def test_init_forms_and_errors():
  learner = meta.bmaml(linear, metalax.losses.squared_error, num_particles=2, num_steps=1, inner_lr=LR)
  trees = [{"w": jnp.full((3, 1), float(i)), "b": jnp.zeros((1,))} for i in range(2)]
  stacked = learner.init(trees)
  np.testing.assert_array_equal(stacked["particles"]["w"][:, 0, 0], [0, 1])
  assert learner.init(stacked)["particles"] is stacked["particles"]
  with pytest.raises(ValueError, match="num_particles=2"):
    learner.init(trees[:1])
  with pytest.raises(ValueError, match="objective"):
    meta.bmaml(linear, metalax.losses.squared_error, num_particles=2, num_steps=1, inner_lr=LR, objective="elbo")
  with pytest.raises(ValueError, match="num_particles"):
    meta.bmaml(linear, metalax.losses.squared_error, num_particles=0, num_steps=1, inner_lr=LR)
