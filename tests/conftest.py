"""Shared test settings: CPU, the XLA flags of the suite, and a compilation cache per worker."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's time is mostly XLA compiling small programs. Compile them without the backend's optimisation passes
# and with XLA:CPU's classic (not MLIR) fusion emitters: 2-4x faster to compile; results agree to float rounding.
# Processes the tests start inherit these settings (tests that start one add to XLA_FLAGS, never replace it).
_TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + [
    flag for flag in _TEST_XLA_FLAGS if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]).strip()

import jax
import numpy as np
import pytest

# Many tests compile the same programs (the experiments' tests several runs of one configuration); a persistent
# cache, fresh for each test session and worker, compiles each once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="metalax_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _finite_difference_grad(f, tree, eps=1e-5):
  """Central differences of scalar ``f`` over every entry of a float64 pytree."""
  f = jax.jit(f)
  leaves, treedef = jax.tree.flatten(tree)
  grads = []
  for i, leaf in enumerate(leaves):
    leaf = np.asarray(leaf, np.float64)
    grad = np.zeros_like(leaf)
    for idx in np.ndindex(leaf.shape):
      for sign in (1, -1):
        bumped = leaf.copy()
        bumped[idx] += sign * eps
        grad[idx] += sign * float(f(treedef.unflatten(leaves[:i] + [bumped] + leaves[i + 1:]))) / (2 * eps)
    grads.append(grad)
  return treedef.unflatten(grads)


@pytest.fixture
def finite_difference_grad():
  """``finite_difference_grad(f, tree, eps=1e-5)``: the reference for gradient tests."""
  return _finite_difference_grad
