"""metalax.parallel: sharding over 4 CPU devices equals one device; mixed precision keeps float32 params."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax import parallel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: the device count must be set before JAX starts.
FOUR_DEVICES = textwrap.dedent("""
    import os, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    import metalax
    from metalax import meta, parallel
    from experiments import sinusoid
    from experiments.configs import sinusoid as sinusoid_config
    assert jax.device_count() == 4, jax.devices()

    # 1. The sinusoid entrypoint's training, one device against four.
    def train(num_devices, workdir):
      config = sinusoid_config.get_config()
      config.update(dict(mlp_features=(16, 16), num_iterations=30, steps_per_call=10, checkpoint_every=30,
                         meta_batch_size=8, num_devices=num_devices))
      model = metalax.models.MLP(features=(16, 16), num_outputs=1)
      params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
      learner = meta.maml(metalax.models.from_linen(model), metalax.losses.squared_error, inner_lr=0.01, num_steps=1)
      result = sinusoid.train(learner, config, os.path.join(workdir, "maml"), params,
                              jax.random.key(1), "maml")
      losses = [float(line.split('"loss": ')[1].split(",")[0].rstrip("}"))
                for line in open(os.path.join(workdir, "maml", "metrics.jsonl"))]
      return result, np.array(losses)

    root = tempfile.mkdtemp()
    one, one_losses = train(1, os.path.join(root, "one"))
    four, four_losses = train(4, os.path.join(root, "four"))
    assert len(four["params"]["Dense_0"]["kernel"].sharding.device_set) == 4  # replicated on 4 devices
    np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # 2. A classification learner through meta.train_step with the batch sharded; episodes sampled inside jit are split by task.
    images = jax.random.uniform(jax.random.key(2), (12, 6, 8, 8, 1))
    apply_fn = lambda params, x: jnp.tanh(x.reshape(x.shape[0], -1) @ params["w"])
    learner = meta.protonet(apply_fn, num_ways=3)
    meta_params = learner.init({"w": 0.1 * jax.random.normal(jax.random.key(3), (64, 8))})
    optimizer = optax.adam(1e-2)
    mesh = parallel.data_mesh()

    def run(mesh):
      meta_step = meta.train_step(learner, optimizer)
      step = lambda mp, s, episodes: meta_step(mp, s, parallel.shard_batch(episodes, mesh))
      state = parallel.replicate((meta_params, optimizer.init(meta_params)), mesh)

      @jax.jit
      def update(state, key):
        episodes = metalax.sample_episodes(key, images, 8, 3, 1, 2)
        return step(*state, episodes)

      losses = []
      for i in range(5):
        params, opt_state, metrics = update(state, jax.random.key(10 + i))
        state = (params, opt_state)
        losses.append(float(metrics["loss"]))
      return state[0], np.array(losses)

    (p1, l1), (p4, l4) = run(None), run(mesh)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    np.testing.assert_allclose(p4["params"]["w"], p1["params"]["w"], rtol=1e-5, atol=1e-6)

    # Each device holds (and samples) only its own tasks: 8 tasks, 2 per device.
    sampled = jax.jit(lambda key: parallel.shard_batch(metalax.sample_episodes(key, images, 8, 3, 1, 2), mesh))(
        jax.random.key(0))
    shards = sampled.support.inputs.addressable_shards
    assert len(shards) == 4 and all(s.data.shape[0] == 2 for s in shards), [s.data.shape for s in shards]
    unsharded = metalax.sample_episodes(jax.random.key(0), images, 8, 3, 1, 2)
    np.testing.assert_array_equal(sampled.support.inputs, unsharded.support.inputs)  # same tasks as 1 device

    # 3. The multi-task entrypoint: each seed's example batch split across the devices, same result as one.
    from experiments import gradnorm
    from experiments.configs import gradnorm as gradnorm_config

    def train_mtl(num_devices):
      config = gradnorm_config.get_config("gradnorm")
      config.update(dict(num_seeds=2, num_iterations=20, steps_per_call=10, checkpoint_every=10, batch_size=16,
                         methods=("equal", "gradnorm"), mlp_features=(8, 8), gradnorm_layer="trunk/Dense_1",
                         num_devices=num_devices))
      config.toy.update(dict(num_tasks=3, input_dim=12, output_dim=4, num_test=64))
      return gradnorm.train_and_evaluate(config, tempfile.mkdtemp())

    mtl_one, mtl_four = train_mtl(1), train_mtl(4)
    for method in ("equal", "gradnorm"):
      for field in ("loss_ratio", "weights"):
        np.testing.assert_allclose(mtl_four[method][field], mtl_one[method][field], rtol=1e-4, atol=1e-6)

    # 4. The representation entrypoint (SimCLR on MNIST-format files the test generated): the sampled image
    # batch split across the devices.
    from experiments import representation
    from experiments.configs import representation as representation_config

    def train_representation(num_devices):
      config = representation_config.get_config("simclr")
      if "download" in config:
        config.download = False
      config.update(dict(dataset="mnist", data_dir=os.environ["METALAX_TEST_MNIST"], hidden=8, num_iterations=4,
                         steps_per_call=2, checkpoint_every=4, batch_size=16, num_test_episodes=4, probe_steps=2, episodes=((2, 1),), review_k=2,
                         projector_hidden=16, projection_dim=8, num_eval_classes=4, num_devices=num_devices))
      workdir = tempfile.mkdtemp()
      representation.train_and_evaluate(config, workdir)
      return representation.load_encoder(workdir, config)

    for a, b in zip(jax.tree.leaves(train_representation(1)), jax.tree.leaves(train_representation(4))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # An uneven split is a clear error.
    try:
      parallel.shard_batch(jnp.zeros((6, 2)), mesh)
    except ValueError as e:
      assert "cannot be split evenly across 4 devices" in str(e), e
    else:
      raise AssertionError("no error for 6 tasks on 4 devices")
    print("OK")
""")


def _write_mnist_like(folder) -> None:
  """Uncompressed IDX files in MNIST's format: 5421 training and 892 test images per digit (the real
  minimum counts), random pixels, so no real data are needed."""
  rng = np.random.default_rng(0)
  os.makedirs(folder)
  for prefix, per_class in (("train", 5421), ("t10k", 892)):
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = rng.integers(0, 256, (labels.size, 28, 28), dtype=np.uint8)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
      header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
      with open(os.path.join(folder, f"{prefix}-{kind}-ubyte"), "wb") as file:
        file.write(header + array.tobytes())


def test_four_devices_equal_one_device(tmp_path):
  mnist_dir = str(tmp_path / "mnist")
  _write_mnist_like(mnist_dir)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
         "PYTHONPATH": REPO_ROOT, "METALAX_TEST_MNIST": mnist_dir, "METALAX_DATA_DIR": str(tmp_path)}
  result = subprocess.run([sys.executable, "-c", FOUR_DEVICES], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout + result.stderr[-5000:]


def test_data_mesh_rejects_bad_counts():
  with pytest.raises(ValueError, match="only 1 devices"):
    parallel.data_mesh(jax.device_count() + 1)
  with pytest.raises(ValueError, match="int >= 0"):
    parallel.data_mesh(-1)
  assert parallel.shard_batch({"x": jnp.ones(3)}, None)["x"].shape == (3,)


def test_mixed_precision_computes_in_bfloat16_with_float32_gradients():
  seen = {}

  def apply_fn(params, inputs):
    seen["inputs"], seen["kernel"] = inputs.dtype, params["w"].dtype
    return inputs @ params["w"]

  plain = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=2)
  learner = parallel.with_precision(plain, "bfloat16")
  assert parallel.with_precision(plain, "float32") is plain
  meta_params = learner.init({"w": jnp.full((1, 1), 0.5, jnp.float32)})
  episodes = metalax.data.sample_sinusoid(jax.random.key(0), 4, 5, 5)
  optimizer = optax.adam(1e-3)
  step = jax.jit(meta.train_step(learner, optimizer))
  new_params, opt_state, metrics = step(meta_params, optimizer.init(meta_params), episodes)
  assert seen == {"inputs": jnp.bfloat16, "kernel": jnp.bfloat16}  # the computation, inner loop included
  assert new_params["params"]["w"].dtype == jnp.float32  # parameters, optimizer state, metrics: float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.floating))
  assert metrics["loss"].dtype == jnp.float32
  grads = jax.grad(lambda mp: meta.batch_loss(learner)(mp, episodes)[0])(meta_params)
  reference = jax.grad(lambda mp: meta.batch_loss(plain)(mp, episodes)[0])(meta_params)
  assert grads["params"]["w"].dtype == jnp.float32
  np.testing.assert_allclose(grads["params"]["w"], reference["params"]["w"], rtol=0.05)
  assert not np.array_equal(grads["params"]["w"], reference["params"]["w"])  # bfloat16 rounding did happen


def test_cast_floating_leaves_integers():
  tree = {"x": jnp.ones(2), "labels": jnp.arange(2), "n": 3, "lr": 0.5}
  cast = parallel.cast_floating(tree, jnp.bfloat16)
  assert cast["x"].dtype == jnp.bfloat16 and cast["labels"].dtype == jnp.int32
  assert cast["n"] == 3 and cast["lr"] == 0.5
  with pytest.raises(ValueError, match="precision must be"):
    parallel.precision_dtype("int8")
