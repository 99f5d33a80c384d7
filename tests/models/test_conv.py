"""Conv-4: the fast patch convolutions against XLA's convolutions, per task and to second order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metalax
from metalax.models.conv import max_pool


def assert_close(a, b):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max()), a, b)


@pytest.mark.parametrize("variant", ["strided", "maxpool"])
def test_patches_equal_xla_convolutions_per_task_and_to_second_order(variant):
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 1))  # hidden=8 covers both patch layouts
  labels = jnp.arange(3)
  models = {impl: metalax.models.Conv4(num_outputs=3, hidden=8, variant=variant, conv_impl=impl)
            for impl in ("patches", "xla")}
  params = jax.jit(jax.vmap(lambda k: models["xla"].init(k, x)["params"]))(jax.random.split(jax.random.key(1), 2))
  outputs = {impl: jax.jit(jax.vmap(lambda p, m=m: m.apply({"params": p}, x)))(params) for impl, m in models.items()}
  assert_close(outputs["patches"], outputs["xla"])

  def meta_grad(model):  # MAML: loss after one inner SGD step, differentiated through the step
    loss = lambda p: jnp.mean(metalax.losses.cross_entropy(model.apply({"params": p}, x), labels))
    outer = lambda p: loss(jax.tree.map(lambda a, g: a - 0.4 * g, p, jax.grad(loss)(p)))
    return jax.jit(jax.vmap(jax.grad(outer)))(params)

  assert_close(meta_grad(models["patches"]), meta_grad(models["xla"]))


@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_floors_odd_sizes_and_its_jitted_second_derivative_is_the_eager_one(size):
  x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
  even = size // 2 * 2
  expected = np.asarray(x)[:, :even, :even].reshape(2, size // 2, 2, size // 2, 2, 3).max(axis=(2, 4))
  np.testing.assert_array_equal(max_pool(x), expected)
  # The derivative of a gradient through the pool (what MAML's meta-gradient takes), jitted and op by op.
  f = lambda x: jnp.sum(jnp.sin(max_pool(jnp.tanh(x))) ** 2)
  second = lambda x: jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(x)
  np.testing.assert_allclose(jax.jit(second)(x), second(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["strided", "maxpool"])
def test_conv4_shapes_and_parameter_count_match_learn2learn(variant):
  x = jnp.zeros((4, 28, 28, 1))
  classifier = metalax.models.Conv4(num_outputs=5, variant=variant)
  params = jax.eval_shape(classifier.init, jax.random.key(0), x)["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == 112_261  # learn2learn OmniglotCNN / CNN4
  assert jax.eval_shape(classifier.apply, {"params": params}, x).shape == (4, 5)
  embedder = metalax.models.Conv4(num_outputs=None, variant=variant)
  assert jax.eval_shape(lambda x: embedder.apply(embedder.init(jax.random.key(0), x), x), x).shape == (4, 64)


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "none"])
def test_conv4_norms_keep_no_running_statistics(norm):
  model = metalax.models.Conv4(num_outputs=3, hidden=8, norm=norm)
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
  variables = model.init(jax.random.key(1), x)
  assert set(variables) == {"params"}
  out = model.apply(variables, x)
  assert out.shape == (4, 3) and np.isfinite(out).all()
  if norm == "batch":  # statistics of the batch: another batch changes the outputs of this one
    both = model.apply(variables, jnp.concatenate([x, 2 * x + 1]))
    assert not np.allclose(both[:4], out)


@pytest.mark.parametrize("kwargs, shape, match", [
    (dict(variant="pooled"), (2, 28, 28, 1), "variant"),
    (dict(norm="instance"), (2, 28, 28, 1), "norm"),
    (dict(), (2, 28, 28), "shape"),
])
def test_conv4_bad_input_raises(kwargs, shape, match):
  with pytest.raises(ValueError, match=match):
    metalax.models.Conv4(num_outputs=5, **kwargs).init(jax.random.key(0), jnp.zeros(shape))


@pytest.mark.parametrize("stride", [1, 2])
def test_folded_batch_norm_equals_conv_then_batch_norm(stride):
  """The first layer's conv + batch norm as one affine map of the patches (3 input channels, as RGB)."""
  from metalax.models.conv import _conv_batch_norm, _conv_xla, _standardize
  keys = jax.random.split(jax.random.key(3), 4)
  x = jax.random.uniform(keys[0], (4, 10, 10, 3))
  kernel = jax.random.normal(keys[1], (3, 3, 3, 8))
  scale, bias = jax.random.uniform(keys[2], (8,)), jax.random.normal(keys[3], (8,))

  def reference(kernel, scale, bias):
    return _standardize(_conv_xla(x, kernel, stride), (0, 1, 2), 1e-5) * scale + bias

  folded = lambda kernel, scale, bias: _conv_batch_norm(x, kernel, scale, bias, stride, 1e-5)
  assert_close(folded(kernel, scale, bias), reference(kernel, scale, bias))
  loss = lambda f: lambda *p: jnp.sum(jnp.sin(f(*p)))
  assert_close(jax.grad(loss(folded), argnums=(0, 1, 2))(kernel, scale, bias),
               jax.grad(loss(reference), argnums=(0, 1, 2))(kernel, scale, bias))
