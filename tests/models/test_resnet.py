"""ResNet-12: parameter count, shapes, a lax.conv reference of the block and the network, DropBlock's mask law."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import metalax
from metalax.models import resnet

KEY = jax.random.key(0)
TINY = (4, 6, 8, 10)  # 4 and 6 input channels take the folded/full-patch paths, 8 and 10 the row path


def random_params(shapes, seed):
  """NumPy-drawn params with the shapes of ``shapes`` (no compiled initialiser)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), jnp.float32)
    if "scale" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def param_shapes(model, x):
  return jax.eval_shape(model.init, KEY, x)["params"]


# The reference: MetaOptNet's BasicBlock written directly with lax.conv_general_dilated.

def _normalize(y, p, norm, groups, eps=1e-5):
  if norm == "none":
    return y
  if norm == "group":
    n, h, w, c = y.shape
    g = y.reshape(n, h, w, groups, c // groups)
    mean, var = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + eps)).reshape(y.shape)
  else:
    axes = (0, 1, 2) if norm == "batch" else (1, 2, 3)
    y = (y - y.mean(axes, keepdims=True)) / jnp.sqrt(y.var(axes, keepdims=True) + eps)
  return y * p["scale"] + p["bias"]


def reference_block(p, x, norm, groups=2, slope=0.1):
  conv = lambda x, k, pad: lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                    precision=lax.Precision.HIGHEST)
  leaky = lambda y: jnp.where(y > 0, y, slope * y)
  y = x
  for i in range(3):
    y = conv(y, p[f"conv_{i}"]["kernel"], ((1, 1), (1, 1)))
    y = y + p[f"conv_{i}"]["bias"] if norm == "none" else _normalize(y, p[f"norm_{i}"], norm, groups)
    y = leaky(y) if i < 2 else y
  shortcut = conv(x, p["shortcut_conv"]["kernel"][None, None], "VALID")
  shortcut = (shortcut + p["shortcut_conv"]["bias"] if norm == "none"
              else _normalize(shortcut, p["shortcut_norm"], norm, groups))
  return lax.reduce_window(leaky(y + shortcut), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def reference_network(params, x, channels):
  for i in range(len(channels)):
    x = reference_block(params[f"block_{i}"], x, "batch")
  return x.mean((1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]


def test_parameter_count_matches_metaoptnet():
  shapes = param_shapes(metalax.models.ResNet12(), jnp.zeros((2, 84, 84, 3)))
  count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
  # Per block: three 3x3 convs, a 1x1 shortcut, four (scale, bias) norms; no conv biases under batch norm.
  expected, c_in = 0, 3
  for c in (64, 160, 320, 640):
    expected += 9 * c_in * c + 2 * 9 * c * c + c_in * c + 4 * 2 * c
    c_in = c
  assert count == expected == 12_424_320  # the "12.4M" of MetaOptNet / FEAT's ResNet-12
  assert shapes["block_3"]["conv_2"]["kernel"].shape == (3, 3, 640, 640)
  assert shapes["block_0"]["shortcut_conv"]["kernel"].shape == (3, 64)
  head = param_shapes(metalax.models.ResNet12(num_outputs=5), jnp.zeros((2, 84, 84, 3)))["head"]
  assert head["kernel"].shape == (640, 5) and head["bias"].shape == (5,)


@pytest.mark.parametrize("image_shape, side", [((84, 84, 3), 5), ((32, 32, 3), 2), ((28, 28, 1), 1)])
def test_output_shapes(image_shape, side):
  x = jnp.zeros((3, *image_shape))
  out, variables = jax.eval_shape(lambda x: metalax.models.ResNet12().init_with_output(KEY, x), x)
  assert set(variables) == {"params"}  # no running statistics
  assert out.shape == (3, 640) and out.dtype == jnp.float32
  flat = jax.eval_shape(lambda v, x: metalax.models.ResNet12(pooling="flatten").apply(v, x), variables, x)
  assert flat.shape == (3, 640 * side * side)  # MetaOptNet's 16,000 features for 84x84


def test_head_dropout_and_group_norm_shapes():
  x = jnp.zeros((3, 28, 28, 1))
  for model, features in ((metalax.models.ResNet12(num_outputs=5, drop_rate=0.1, dropblock_size=5), 5),
                          (metalax.models.ResNet12(channels=TINY, norm="group", num_groups=2), 10)):
    variables = jax.eval_shape(model.init, KEY, x)
    stochastic = jax.eval_shape(lambda v, x, k, m=model: m.apply(v, x, rngs={"dropout": k}), variables, x, KEY)
    assert stochastic.shape == (3, features)


VARIANTS = (("batch", "patches"), ("batch", "xla"), ("layer", "patches"), ("group", "xla"), ("none", "patches"))


def test_block_matches_lax_reference_values_and_gradients():
  x = jax.random.normal(jax.random.key(1), (3, 9, 7, 3))  # odd, non-square: the pool floors to 4x3
  blocks = [resnet.ResidualBlock(8, norm=norm, num_groups=2 if norm == "group" else None, conv_impl=impl)
            for norm, impl in VARIANTS]
  params = [random_params(param_shapes(block, x), seed) for seed, block in enumerate(blocks)]

  @jax.jit
  def run(params, x):
    outs = [block.apply({"params": p}, x) for block, p in zip(blocks, params)]
    refs = [reference_block(p, x, norm) for p, (norm, _) in zip(params, VARIANTS)]
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
    grads = jax.grad(loss(lambda p, x: blocks[0].apply({"params": p}, x)), (0, 1))(params[0], x)
    ref_grads = jax.grad(loss(lambda p, x: reference_block(p, x, "batch")), (0, 1))(params[0], x)
    return outs, refs, grads, ref_grads

  outs, refs, grads, ref_grads = run(params, x)
  for out, ref in zip(outs, refs):
    assert out.shape == (3, 4, 3, 8)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), grads, ref_grads)
  assert set(params[0]) == {"conv_0", "conv_1", "conv_2", "norm_0", "norm_1", "norm_2", "shortcut_conv",
                            "shortcut_norm"}
  assert set(params[4]["conv_0"]) == {"kernel", "bias"}  # without normalisation the convs have a bias


def test_network_reference_determinism_dropout_and_finite_gradients():
  # conv_impl="xla" and an "rbg" key compile several times faster than the patches and threefry; the
  # block test covers the patches.
  model = metalax.models.ResNet12(num_outputs=3, channels=TINY, drop_rate=0.2, dropblock_size=2, conv_impl="xla")
  x = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))
  params = random_params(param_shapes(model, x), 7)

  @jax.jit
  def run(params, x, key):
    plain = model.apply({"params": params}, x)
    off = model.apply({"params": params}, x, deterministic=True, rngs={"dropout": key})

    # Gradients through both DropBlocks (blocks 2 and 3) and the head; the backward pass through blocks
    # 0-1 (checked against the reference in the block test) is left out, halving the compile time.
    late = {name: params[name] for name in ("block_2", "block_3", "head")}

    def loss(late):
      logits = model.apply({"params": {**params, **late}}, x, rngs={"dropout": key})
      return jnp.mean(metalax.losses.cross_entropy(logits, jnp.arange(4) % 3)), logits

    (_, on), grads = jax.value_and_grad(loss, has_aux=True)(late)
    return plain, off, on, grads, reference_network(params, x, TINY)

  plain, off, on, grads, reference = run(params, x, jax.random.key(3, impl="rbg"))
  np.testing.assert_allclose(plain, reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(plain, off)  # no key, or deterministic=True: dropout and DropBlock off
  assert not np.allclose(on, plain)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(grads[f"block_{i}"]["conv_0"]["kernel"]).max() > 0 for i in (2, 3))


def test_dropblock_mask_law_and_block_structure():
  n, h, w, c, block, rate = 3000, 7, 6, 2, 3, 0.2
  masks = np.asarray(jax.jit(resnet.dropblock_mask, static_argnums=(1, 3))(KEY, (n, h, w, c), rate, block))
  assert set(np.unique(masks)) == {0.0, 1.0}
  # Exact law: (y, x) is kept iff none of the seeds whose block covers it fired.
  gamma = rate / block ** 2 * h * w / ((h - block + 1) * (w - block + 1))
  np.testing.assert_allclose(resnet.dropblock_gamma(rate, h, w, block), gamma, rtol=1e-6)
  covers = lambda size: np.array([sum(s <= y <= s + block - 1 for s in range(size - block + 1)) for y in range(size)])
  keep = (1 - gamma) ** (covers(h)[:, None] * covers(w)[None, :])          # [h, w]
  empirical = masks.mean(axis=(0, 3))
  assert np.all(np.abs(empirical - keep) < 5 * np.sqrt(keep * (1 - keep) / (n * c)))
  # Block structure: the dropped set is exactly the union of the block x block windows that are fully dropped.
  dropped = 1 - masks.transpose(0, 3, 1, 2)                                 # [n, c, h, w]
  windows = np.lib.stride_tricks.sliding_window_view(dropped, (block, block), axis=(2, 3)).min(axis=(-1, -2))
  covered = np.zeros_like(dropped)
  for dy in range(block):
    for dx in range(block):
      covered[:, :, dy:dy + h - block + 1, dx:dx + w - block + 1] = np.maximum(
          covered[:, :, dy:dy + h - block + 1, dx:dx + w - block + 1], windows)
  np.testing.assert_array_equal(covered, dropped)
  assert 0.1 < dropped.mean() < 0.3


def test_dropblock_clipped_block_scaling_and_identity():
  x = jax.random.normal(jax.random.key(4), (2, 5, 5, 3))

  @jax.jit
  def run(key, x):
    clipped = resnet.dropblock_mask(key, (4000, 3, 3, 1), 0.3, 5)
    mask = resnet.dropblock_mask(key, x.shape, 0.25, 2)
    return clipped, mask, resnet.dropblock(key, x, 0.25, 2), resnet.dropblock(key, x, 0.0, 2)

  clipped, mask, dropped, identity = (np.asarray(a) for a in run(jax.random.key(5), x))
  # A block larger than the 3x3 map is clipped to it: one seed position, the whole map dropped with p = rate.
  per_map = clipped.reshape(4000, 9)
  assert np.all((per_map == 0).all(1) | (per_map == 1).all(1))
  assert abs((per_map[:, 0] == 0).mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 4000)
  # Rescaled by the kept fraction of the whole batch; rate 0 is the identity.
  np.testing.assert_allclose(dropped, x * mask * mask.size / mask.sum(), rtol=1e-6)
  np.testing.assert_array_equal(identity, x)
  # MetaOptNet's gamma for its 10x10 map and block 5.
  np.testing.assert_allclose(resnet.dropblock_gamma(0.1, 10, 10, 5), 0.1 / 25 * 100 / 36, rtol=1e-6)


def test_dropblock_schedule():
  rates = [float(resnet.dropblock_rate(0.1, step, 40000)) for step in (0, 10000, 40000, 80000)]
  np.testing.assert_allclose(rates, [0.0, 0.025, 0.1, 0.1], rtol=1e-6)
  assert float(resnet.dropblock_rate(0.1, 5, None)) == pytest.approx(0.1)
  model = metalax.models.ResNet12(channels=TINY, drop_rate=0.1, dropblock_schedule_steps=100)
  x = jnp.zeros((2, 16, 16, 1))
  variables = jax.eval_shape(model.init, KEY, x)
  shape = jax.eval_shape(lambda v, k, s: model.apply(v, x, rngs={"dropout": k}, step=s), variables, KEY, 5)
  assert shape.shape == (2, 10)
  with pytest.raises(ValueError, match="pass the training step"):
    jax.eval_shape(lambda v, k: model.apply(v, x, rngs={"dropout": k}), variables, KEY)
  jax.eval_shape(lambda v: model.apply(v, x), variables)  # deterministic: no step needed


@pytest.mark.parametrize("kwargs, shape, match", [
    (dict(channels=(4, 6, 8)), (2, 16, 16, 3), "four positive ints"),
    (dict(norm="instance"), (2, 16, 16, 3), "norm must be one of"),
    (dict(norm="group", num_groups=3, channels=TINY), (2, 16, 16, 3), "divisor of every channel"),
    (dict(pooling="max"), (2, 16, 16, 3), "pooling must be one of"),
    (dict(drop_rate=1.0), (2, 16, 16, 3), "drop_rate must be in"),
    (dict(dropblock_size=0), (2, 16, 16, 3), "dropblock_size"),
    (dict(), (2, 16, 16), "shape \\[n, h, w, c\\]"),
    (dict(), (2, 12, 12, 3), "at least 16x16"),
])
def test_bad_configuration_raises(kwargs, shape, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(metalax.models.ResNet12(**kwargs).init, KEY, jnp.zeros(shape))


def test_stochastic_without_key_raises():
  model = metalax.models.ResNet12(channels=TINY, drop_rate=0.1)
  with pytest.raises(ValueError, match='rngs=\\{"dropout": key\\}'):
    jax.eval_shape(lambda: model.init(KEY, jnp.zeros((2, 16, 16, 3)), deterministic=False))


def test_anil_finds_the_head():
  params = param_shapes(metalax.models.ResNet12(num_outputs=5, channels=TINY), jnp.zeros((2, 16, 16, 3)))
  assert set(params) == {"block_0", "block_1", "block_2", "block_3", "head"}
  assert isinstance(metalax.models.ResNet12(), nn.Module)
