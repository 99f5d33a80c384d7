"""Tests for metalax.mtl.conditioning: equivalences, closed forms, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax.mtl import conditioning
from metalax.mtl import objective

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (5, 3))
TASK_IDS = jnp.array([0, 2, 1, 2, 0])
Z = objective.one_hot_descriptors(TASK_IDS, 3)


def _random_params(module, seed, *args):
  """Random parameters (non-zero biases too), drawn on the host from traced shapes."""
  shapes = jax.eval_shape(module.init, KEY, *args)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def _concat_from_additive(params):
  kernel = jnp.concatenate([params["inputs"]["kernel"], params["task"]["kernel"]], axis=0)
  return {"dense": {"kernel": kernel, "bias": params["inputs"]["bias"]}}


def _additive_from_concat(params, num_input_features):
  kernel = params["dense"]["kernel"]
  return {"inputs": {"kernel": kernel[:num_input_features], "bias": params["dense"]["bias"]},
          "task": {"kernel": kernel[num_input_features:]}}


@pytest.mark.parametrize("z", [Z, jax.random.normal(jax.random.key(2), (5, 4)),
                               jnp.array([0.3, -1.0])])
def test_concat_and_additive_conditioning_are_the_same_function_class(z):
  concat = conditioning.ConcatConditioning(features=6)
  additive = conditioning.AdditiveConditioning(features=6)
  # Random (not init) parameters, so biases are non-zero too.
  concat_params = _random_params(concat, 3, X, z)
  additive_params = _random_params(additive, 4, X, z)
  # concat -> additive: W [x; z] + b = W_x x + W_z z + b.
  np.testing.assert_allclose(
      additive.apply({"params": _additive_from_concat(concat_params, X.shape[1])}, X, z),
      concat.apply({"params": concat_params}, X, z), rtol=1e-5, atol=1e-5)
  # additive -> concat.
  np.testing.assert_allclose(
      concat.apply({"params": _concat_from_additive(additive_params)}, X, z),
      additive.apply({"params": additive_params}, X, z), rtol=1e-5, atol=1e-5)


def test_additive_with_one_hot_is_a_bias_per_task():
  layer = conditioning.AdditiveConditioning(features=4)
  params = _random_params(layer, 5, X, Z)
  expected = (X @ params["inputs"]["kernel"] + params["inputs"]["bias"]
              + params["task"]["kernel"][TASK_IDS])
  np.testing.assert_allclose(layer.apply({"params": params}, X, Z), expected, rtol=1e-5,
                             atol=1e-5)


def test_film_closed_form_identity_and_gating():
  film = conditioning.FiLM()
  params = _random_params(film, 6, X, Z)
  gamma = 1.0 + Z @ params["scale"]["kernel"] + params["scale"]["bias"]
  beta = Z @ params["shift"]["kernel"] + params["shift"]["bias"]
  np.testing.assert_allclose(film.apply({"params": params}, X, Z), gamma * X + beta,
                             rtol=1e-5, atol=1e-5)
  # Zero generator weights: the Δγ form starts at the identity.
  zeros = jax.tree.map(jnp.zeros_like, params)
  np.testing.assert_allclose(film.apply({"params": zeros}, X, Z), X)
  # Multiplicative gating only.
  gate = conditioning.FiLM(use_shift=False, scale_offset=0.0)
  gate_params = _random_params(gate, 9, X, Z)
  assert set(gate_params) == {"scale"}
  expected = (Z @ gate_params["scale"]["kernel"] + gate_params["scale"]["bias"]) * X
  np.testing.assert_allclose(gate.apply({"params": gate_params}, X, Z), expected, rtol=1e-5,
                             atol=1e-6)


def test_film_on_channels_last_feature_maps():
  film = conditioning.FiLM()
  maps = jax.random.normal(KEY, (5, 4, 4, 3))
  params = _random_params(film, 7, maps, Z)
  out = film.apply({"params": params}, maps, Z)
  gamma = 1.0 + Z @ params["scale"]["kernel"] + params["scale"]["bias"]
  beta = Z @ params["shift"]["kernel"] + params["shift"]["bias"]
  np.testing.assert_allclose(out, gamma[:, None, None] * maps + beta[:, None, None], rtol=1e-5,
                             atol=1e-5)


def test_multi_head_selects_each_examples_head():
  heads = conditioning.MultiHead(num_tasks=3, num_outputs=2)
  params = _random_params(heads, 8, X, TASK_IDS)
  assert params["kernel"].shape == (3, 3, 2) and params["bias"].shape == (3, 2)
  expected = np.stack([X[i] @ params["kernel"][t] + params["bias"][t]
                       for i, t in enumerate(TASK_IDS.tolist())])
  np.testing.assert_allclose(heads.apply({"params": params}, X, TASK_IDS), expected, rtol=1e-5,
                             atol=1e-5)
  every = heads.apply({"params": params}, X)
  assert every.shape == (3, 5, 2)
  np.testing.assert_allclose(every[TASK_IDS, jnp.arange(5)], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(heads.apply({"params": params}, X, 1), every[1], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("module,args", [
    (conditioning.ConcatConditioning(4), (X, Z)),
    (conditioning.AdditiveConditioning(4), (X, Z)),
    (conditioning.FiLM(), (X, Z)),
    (conditioning.MultiHead(3, 2), (X, TASK_IDS)),
])
def test_jit_agrees_and_gradients_reach_every_parameter(module, args):
  params = module.init(KEY, *args)["params"]  # the real initialisers, once each
  apply = lambda p, *a: module.apply({"params": p}, *a)
  np.testing.assert_allclose(jax.jit(apply)(params, *args), apply(params, *args), rtol=1e-6,
                             atol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(apply(p, *args)))))(params)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


def test_conditioning_rejects_mismatched_descriptors():
  layer = conditioning.ConcatConditioning(4)
  with pytest.raises(ValueError, match=r"\[n, d_z\] with n = 5"):
    jax.eval_shape(layer.init, KEY, X, jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="task_ids must have shape"):
    jax.eval_shape(conditioning.MultiHead(3, 2).init, KEY, X, jnp.array([0, 1]))
