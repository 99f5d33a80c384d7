"""Shared test settings: CPU, and a compilation cache shared by the tests of one run."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's time is mostly XLA compiling small programs: compile them without the backend's optimisation
# passes (2-3x faster to compile; results agree to float rounding). Processes the tests start inherit it.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax
import numpy as np
import pytest

# Many tests compile the same programs (the experiments' tests several runs of one
# configuration); a persistent cache, fresh for each test session, compiles each once.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("METALAX_TEST_CACHE") or tempfile.mkdtemp(prefix="metalax_jax_cache_"))
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
