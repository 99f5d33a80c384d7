"""linen, NNX and plain-function adapters under grad, vmap, scan and jit."""

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metalax


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(jnp.tanh(nn.Dense(4)(x)))


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(3, 4, rngs=rngs)
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def plain(params, x, scale=1.0):
  return scale * jnp.tanh(x @ params["w1"]) @ params["w2"]


def make(kind):
  x = jax.random.normal(jax.random.key(1), (5, 3))
  if kind == "linen":
    module = LinenNet()
    return metalax.models.from_linen(module), module.init(jax.random.key(0), x)["params"], x
  if kind == "nnx":
    apply_fn, params = metalax.models.from_nnx(NnxNet(nnx.Rngs(0)))
    return apply_fn, params, x
  keys = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(keys[0], (3, 4)), "w2": jax.random.normal(keys[1], (4, 2))}
  return metalax.models.from_function(plain, scale=2.0), params, x


@pytest.mark.parametrize("kind", ["linen", "nnx", "function"])
def test_adapter_under_grad_vmap_scan_jit(kind):
  apply_fn, params, x = make(kind)
  loss = lambda p, x: jnp.sum(apply_fn(p, x) ** 2)
  out = apply_fn(params, x)
  assert out.shape == (5, 2)
  np.testing.assert_allclose(jax.jit(apply_fn)(params, x), out, rtol=1e-6)

  grads = jax.grad(loss)(params, x)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))

  stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
  batched = jax.vmap(apply_fn, in_axes=(0, None))(stacked, x)
  np.testing.assert_allclose(batched[0], out, rtol=1e-6)
  np.testing.assert_allclose(batched[1], apply_fn(jax.tree.map(lambda p: 2 * p, params), x), rtol=1e-6)

  def sgd_step(p, _):
    return jax.tree.map(lambda p, g: p - 0.01 * g, p, jax.grad(loss)(p, x)), None

  scanned, _ = jax.jit(lambda p: jax.lax.scan(sgd_step, p, None, length=3))(params)
  manual = params
  for _ in range(3):
    manual, _ = sgd_step(manual, None)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), scanned, manual)


def test_nnx_adapter_does_not_mutate_the_module():
  module = NnxNet(nnx.Rngs(0))
  before = np.asarray(module.hidden.kernel[...]).copy()
  apply_fn, params = metalax.models.from_nnx(module)
  jax.grad(lambda p: jnp.sum(apply_fn(jax.tree.map(lambda q: q + 1.0, p), jnp.ones((2, 3)))))(params)
  np.testing.assert_array_equal(module.hidden.kernel[...], before)


def test_maml_runs_on_every_adapter():
  for kind in ("linen", "nnx", "function"):
    apply_fn, params, x = make(kind)
    episode = metalax.Episode(metalax.Batch(x, jnp.zeros((5, 2))), metalax.Batch(x, jnp.ones((5, 2))))
    learner = metalax.meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=2)
    grads, _ = jax.jit(jax.grad(learner.loss, has_aux=True))(learner.init(params), episode)
    assert jax.tree.structure(grads["params"]) == jax.tree.structure(params)


def test_bad_models_raise():
  with pytest.raises(ValueError, match="flax.linen.Module"):
    metalax.models.from_linen(NnxNet(nnx.Rngs(0)))
  with pytest.raises(ValueError, match="flax.nnx.Module"):
    metalax.models.from_nnx(LinenNet())
  with pytest.raises(ValueError, match=r"fn\(params, inputs"):
    metalax.models.from_function(lambda x: x)


def test_mlp_shapes():
  model = metalax.models.MLP(features=(40, 40), num_outputs=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  assert set(params) == {"Dense_0", "Dense_1", "head"}
  assert metalax.models.from_linen(model)(params, jnp.zeros((7, 1))).shape == (7, 1)
