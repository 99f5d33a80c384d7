r"""Peak memory of the triplet loss's value and gradient: the O(n^2) form against the [n, n, n] one.

For each mining, the figure is XLA's buffer assignment for the compiled
``value_and_grad`` of ``jnp.mean(triplet_loss(...))``
(``compiled.memory_analysis().temp_size_in_bytes``: every intermediate buffer
alive at the peak, inputs and outputs excluded), so it needs no run: the dense
form at n = 1,024 is compiled, not executed. The dense form is the
implementation ``triplet_loss`` had before its O(n^2) rewrite (kept here, and
in ``tests/losses/test_contrastive.py`` as the reference). ``--time`` also runs
the O(n^2) form and reports the median wall time of its value and gradient.

Usage:
  python -m benchmarks.triplet_memory
  python -m benchmarks.triplet_memory --sizes=256,1024 --dim=64 --time
"""

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metalax import losses

_SIZES = flags.DEFINE_list("sizes", ["256", "1024"], "Batch sizes n.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension d.")
_CLASSES = flags.DEFINE_integer("examples_per_class", 4, "Examples per class in the batch (PK sampling).")
_TIME = flags.DEFINE_bool("time", False, "Also time the O(n^2) form (median of 5 runs after one warm-up).")


def dense_triplet_loss(embeddings, labels, margin=0.2, mining="all"):
  """The [n, n, n] implementation: batch-all over every triplet, FaceNet semi-hard over an [a, p, n] mask."""
  distances = losses.pairwise_distances(embeddings)
  same = labels[:, None] == labels[None, :]
  positive, negative = same & ~jnp.eye(labels.shape[0], dtype=bool), ~same
  n = embeddings.shape[0]
  if mining == "all":
    valid = positive[:, :, None] & negative[:, None, :]
    values = jnp.where(valid, jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin), 0.0)
    return n * jnp.sum(values, axis=(1, 2)) / jnp.maximum(jnp.sum(values > 0), 1)
  farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])
  closest_farther = jnp.min(jnp.where(farther, distances[:, None, :], jnp.inf), axis=2)
  farthest = jnp.max(jnp.where(negative, distances, -jnp.inf), axis=1)[:, None]
  chosen = jnp.where(jnp.any(farther, axis=2), closest_farther, farthest)
  values = jnp.where(positive, jax.nn.relu(distances - jnp.where(jnp.isfinite(chosen), chosen, 0.0) + margin), 0.0)
  return n * jnp.sum(values, axis=1) / jnp.maximum(jnp.sum(values > 0), 1)


def compiled(fn, n, dim, examples_per_class):
  embeddings = jax.ShapeDtypeStruct((n, dim), jnp.float32)
  labels = jnp.arange(n, dtype=jnp.int32) // examples_per_class
  grad_fn = jax.jit(jax.value_and_grad(lambda x: jnp.mean(fn(losses.l2_normalize(x), labels))))
  return grad_fn, grad_fn.lower(embeddings).compile()


def main(argv):
  del argv
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, d = {_DIM.value}, "
        f"{_CLASSES.value} examples per class")
  header = f"{'n':>6} {'mining':>11} {'dense MiB':>11} {'O(n^2) MiB':>11} {'ratio':>8}"
  print(header + (f" {'O(n^2) ms':>10}" if _TIME.value else ""))
  for n in (int(s) for s in _SIZES.value):
    for mining in losses.contrastive.MININGS:
      new = functools.partial(losses.triplet_loss, mining=mining)
      grad_fn, new_compiled = compiled(new, n, _DIM.value, _CLASSES.value)
      new_mib = new_compiled.memory_analysis().temp_size_in_bytes / 2**20
      if mining == "batch_hard":   # O(n^2) in both forms
        dense_mib = float("nan")
      else:
        _, dense_compiled = compiled(functools.partial(dense_triplet_loss, mining=mining), n, _DIM.value,
                                     _CLASSES.value)
        dense_mib = dense_compiled.memory_analysis().temp_size_in_bytes / 2**20
      line = f"{n:>6} {mining:>11} {dense_mib:>11.1f} {new_mib:>11.2f} {dense_mib / new_mib:>8.0f}"
      if _TIME.value:
        x = jax.random.normal(jax.random.key(0), (n, _DIM.value))
        jax.block_until_ready(grad_fn(x))
        times = []
        for _ in range(5):
          start = time.perf_counter()
          jax.block_until_ready(grad_fn(x))
          times.append(time.perf_counter() - start)
        line += f" {1e3 * np.median(times):>10.1f}"
      print(line)


if __name__ == "__main__":
  app.run(main)
