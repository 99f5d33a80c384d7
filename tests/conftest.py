"""Shared test settings: CPU, and a compilation cache shared by the tests of one run."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Many tests compile the same programs (the experiments' tests several runs of one
# configuration); a persistent cache, fresh for each test session, compiles each once.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("METALAX_TEST_CACHE") or tempfile.mkdtemp(prefix="metalax_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
