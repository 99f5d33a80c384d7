"""GP task family: kernels and posterior against NumPy formulas, samples against their covariance."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metalax
from metalax.data import gp
from metalax.types import Batch


def numpy_kernel(kernel, x, y, length, s, p):
  r = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
  if kernel == "rbf":
    return s ** 2 * np.exp(-r ** 2 / (2 * length ** 2))
  if kernel == "matern52":
    a = np.sqrt(5) * r / length
    return s ** 2 * (1 + a + a ** 2 / 3) * np.exp(-a)
  return s ** 2 * np.exp(-2 * np.sin(np.pi * r / p) ** 2 / length ** 2)


def test_kernels_match_numpy():
  rng = np.random.default_rng(0)
  x, y = rng.uniform(-2, 2, (5, 2)), rng.uniform(-2, 2, (4, 2))
  x[0] = y[0]   # a zero distance

  @jax.jit
  def run(x, y):
    matrices = [gp.kernel_matrix(k, x, y, lengthscale=0.7, signal_scale=1.3, period=1.5) for k in gp.KERNELS]
    # Gradients are finite at zero distance (the sqrt is guarded).
    grads = [jax.grad(lambda x, k=k: jnp.sum(gp.kernel_matrix(k, x, x, lengthscale=0.7, signal_scale=1.0)))(x)
             for k in gp.KERNELS]
    return matrices, grads

  matrices, grads = run(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  for kernel, got, grad in zip(gp.KERNELS, matrices, grads):
    np.testing.assert_allclose(got, numpy_kernel(kernel, x, y, 0.7, 1.3, 1.5), rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(grad))


def test_samples_have_the_kernel_covariance():
  num_tasks = 4000
  tasks = gp.sample_gp_tasks(jax.random.key(0), num_tasks, kernel="matern52", lengthscale=0.5,
                             signal_scale=0.8, noise=0.1)
  inputs = jnp.broadcast_to(jnp.array([[-1.0], [-0.8], [0.5]]), (num_tasks, 3, 1))
  labels = np.asarray(jax.jit(tasks.sample)(jax.random.key(1), inputs))[..., 0]
  expected = numpy_kernel("matern52", np.asarray(inputs[0]), np.asarray(inputs[0]), 0.5, 0.8, 1.0)
  expected += 0.01 * np.eye(3)
  np.testing.assert_allclose(labels.T @ labels / num_tasks, expected, atol=0.04)
  np.testing.assert_allclose(labels.mean(0), 0, atol=0.04)


def test_sample_gp_shapes_ranges_jit_and_errors():
  sample = jax.jit(functools.partial(gp.sample_gp, kernel="periodic", period=(0.5, 1.5)),
                   static_argnums=(1, 2, 3))
  episodes = sample(jax.random.key(0), 6, 4, 7)
  assert episodes.support.inputs.shape == (6, 4, 1) and episodes.query.labels.shape == (6, 7, 1)
  assert episodes.support.inputs.dtype == jnp.float32
  assert float(jnp.min(episodes.query.inputs)) >= -2 and float(jnp.max(episodes.query.inputs)) <= 2
  again = sample(jax.random.key(0), 6, 4, 7)
  np.testing.assert_array_equal(episodes.query.labels, again.query.labels)
  metalax.types.check_episode(episodes, batch_dims=1)
  tasks = gp.sample_gp_tasks(jax.random.key(1), 500)
  assert 0.1 <= float(tasks.lengthscale.min()) and float(tasks.lengthscale.max()) <= 0.6
  assert 0.1 <= float(tasks.signal_scale.min()) and float(tasks.signal_scale.max()) <= 1.0
  with pytest.raises(ValueError, match="kernel"):
    gp.sample_gp(jax.random.key(0), 2, 3, 3, kernel="cosine")
  with pytest.raises(ValueError, match="lengthscale"):
    gp.sample_gp_tasks(jax.random.key(0), 2, lengthscale=(0.5, 0.1))
  with pytest.raises(ValueError, match="num_shots"):
    gp.sample_gp(jax.random.key(0), 2, 0, 3)


def test_gp_predictive_matches_numpy_and_is_calibrated():
  @jax.jit
  def run(key):   # (a function of a key: with no argument XLA would constant-fold the whole program)
    keys = jax.random.split(key, 4)
    tasks = gp.sample_gp_tasks(keys[0], 3, kernel="rbf")
    episodes = gp.gp_episodes(keys[1], tasks, 5, 4, input_dim=2)
    # On tasks drawn from the same prior, the exact 95% interval covers about 95% of the targets.
    many_tasks = gp.sample_gp_tasks(keys[2], 3000, kernel="matern52")
    many = gp.gp_episodes(keys[3], many_tasks, 6, 1)
    mean, scale = gp.gp_predictive(many_tasks, many.support, many.query.inputs)
    coverage = metalax.metrics.interval_coverage(mean[:, 0], scale[:, 0], many.query.labels[:, 0])
    return tasks, episodes, gp.gp_predictive(tasks, episodes.support, episodes.query.inputs), jnp.mean(coverage)

  tasks, episodes, (mean, scale), coverage = run(jax.random.key(2))
  assert mean.shape == scale.shape == (3, 4, 1)
  for b in range(3):
    length, s = float(tasks.lengthscale[b]), float(tasks.signal_scale[b])
    xc = np.asarray(episodes.support.inputs[b], np.float64)
    yc = np.asarray(episodes.support.labels[b], np.float64)
    xt = np.asarray(episodes.query.inputs[b], np.float64)
    k = numpy_kernel("rbf", xc, xc, length, s, 1) + gp.NOISE ** 2 * np.eye(5)
    ks = numpy_kernel("rbf", xc, xt, length, s, 1)
    expected_mean = ks.T @ np.linalg.solve(k, yc)
    expected_var = s ** 2 - np.sum(ks * np.linalg.solve(k, ks), 0) + gp.NOISE ** 2
    np.testing.assert_allclose(mean[b], expected_mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(scale[b, :, 0], np.sqrt(expected_var), rtol=1e-3, atol=1e-4)
  assert abs(float(coverage) - 0.95) < 0.015
  with pytest.raises(ValueError, match="context labels"):
    gp.gp_predictive(tasks, Batch(episodes.support.inputs, episodes.support.labels[..., 0]),
                     episodes.query.inputs)


LARGE_BATCHES_AT_ONCE = """
import jax, jax.numpy as jnp
from metalax.data import gp

@jax.jit
def run(key):   # two independent GP computations over 3000 tasks each, so their linear algebra can run at once
  total = 0.0
  for j in range(2):
    tasks = gp.sample_gp_tasks(jax.random.fold_in(key, j), 3000, kernel="matern52")
    episodes = gp.gp_episodes(jax.random.fold_in(key, j), tasks, 6, 1)
    mean, scale = gp.gp_predictive(tasks, episodes.support, episodes.query.inputs)
    total += jnp.sum(mean) + jnp.sum(scale)
  return total

for i in range(10):
  float(run(jax.random.key(i)))
"""


def test_large_batches_of_tasks_at_once_do_not_deadlock():
  # jaxlib 0.10.2 on CPU: two batched LAPACK calls above its threading size, running at once, deadlocked a 2-core
  # machine within three calls of this program before gp kept its calls under that size.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", LARGE_BATCHES_AT_ONCE], env=env, capture_output=True, text=True,
                          timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
