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


class NnxDropoutNet(nnx.Module):

  def __init__(self, rngs, norm=None):
    self.hidden = nnx.Linear(3, 16, rngs=rngs)
    self.norm = norm
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(16, 2, rngs=rngs)

  def __call__(self, x, scale=1.0):
    h = self.hidden(x)
    if self.norm is not None:
      h = self.norm(h)
    return scale * self.out(self.dropout(jnp.tanh(h)))


class LinenDropoutNet(nn.Module):

  @nn.compact
  def __call__(self, x, deterministic=True):
    return nn.Dense(2)(nn.Dropout(0.5, deterministic=deterministic)(nn.Dense(16)(x)))


def test_nnx_adapter_draws_dropout_masks_from_the_key():
  apply_fn, params = metalax.models.from_nnx(NnxDropoutNet(nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(1), (4, 3))
  # One compile: outputs at no key (twice, and with a call keyword) and at three keys (two equal).
  plain = jax.jit(apply_fn)
  keyed = jax.jit(jax.vmap(lambda key: apply_fn(params, x, key=key)))
  outputs = np.asarray(keyed(jnp.stack([jax.random.key(2), jax.random.key(2), jax.random.key(3)])))
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert np.abs(outputs[0] - outputs[2]).max() > 1e-3          # another key, another mask
  np.testing.assert_array_equal(plain(params, x), plain(params, x))   # no key: deterministic
  assert np.abs(outputs[0] - plain(params, x)).max() > 1e-3
  # Call keywords reach the module; an evaluation-mode module has no dropout, key or not.
  scaled, _ = metalax.models.from_nnx(NnxDropoutNet(nnx.Rngs(0)), scale=2.0)
  np.testing.assert_allclose(scaled(params, x), 2 * plain(params, x), rtol=1e-6)
  module = NnxDropoutNet(nnx.Rngs(0))
  module.eval()
  eval_fn, _ = metalax.models.from_nnx(module)
  np.testing.assert_allclose(eval_fn(params, x, key=jax.random.key(2)), eval_fn(params, x), rtol=1e-6)


def test_nnx_adapter_refuses_to_drop_batchnorm_statistics():
  x = jax.random.normal(jax.random.key(1), (6, 3))
  training = NnxDropoutNet(nnx.Rngs(0), norm=nnx.BatchNorm(16, rngs=nnx.Rngs(0)))
  apply_fn, params = metalax.models.from_nnx(training)
  with pytest.raises(ValueError, match=r"updated non-parameter state.*norm.*discard_state_updates"):
    apply_fn(params, x)
  # Opting in: each call normalises with its own batch's statistics (MAML's batch norm).
  module = NnxDropoutNet(nnx.Rngs(0), norm=nnx.BatchNorm(16, rngs=nnx.Rngs(0)))
  module.dropout.deterministic = True
  batch_fn, params = metalax.models.from_nnx(module, discard_state_updates=True)
  h = np.asarray(x @ params["hidden"]["kernel"][...] + params["hidden"]["bias"][...], np.float64)
  h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
  expected = np.tanh(h) @ params["out"]["kernel"][...] + params["out"]["bias"][...]
  np.testing.assert_allclose(batch_fn(params, x), expected, rtol=1e-4, atol=1e-5)
  # Evaluation mode reads the running averages and updates nothing: no flag needed.
  module.eval()
  eval_fn, params = metalax.models.from_nnx(module)
  assert eval_fn(params, x).shape == (6, 2)


def test_linen_and_function_adapters_take_a_key():
  x = jax.random.normal(jax.random.key(1), (4, 3))
  module = LinenDropoutNet()
  params = module.init(jax.random.key(0), x)["params"]
  apply_fn = metalax.models.from_linen(module, deterministic=False)
  a, b, c = (apply_fn(params, x, key=jax.random.key(k)) for k in (2, 2, 3))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3
  deterministic = metalax.models.from_linen(module)   # no rngs needed, the key is unused
  np.testing.assert_array_equal(deterministic(params, x, key=jax.random.key(2)), deterministic(params, x))
  with pytest.raises(ValueError, match="rng_names"):
    metalax.models.from_linen(module, rng_names="dropout")

  noisy = metalax.models.from_function(
      lambda p, x, key=None: p * x if key is None else p * x + jax.random.normal(key, x.shape))
  np.testing.assert_array_equal(noisy(1.0, x), x)
  np.testing.assert_allclose(noisy(1.0, x, key=jax.random.key(0)) - x, jax.random.normal(jax.random.key(0), x.shape),
                             atol=1e-6)
  keyless = metalax.models.from_function(plain, scale=2.0)   # a key is ignored by a keyless fn
  p = make("function")[1]
  np.testing.assert_array_equal(keyless(p, x, key=jax.random.key(0)), keyless(p, x))
