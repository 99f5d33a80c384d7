"""Gradient surgery: PCGrad (projection of conflicting gradients) and GradDrop (sign dropout).

Both are randomised: the PRNG key lives in the aggregator state and is split at
every call, as optax's noise transforms do.

References:
  Yu et al., Gradient Surgery for Multi-Task Learning (PCGrad), NeurIPS 2020.
  Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
  Sign Dropout (GradDrop), NeurIPS 2020.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import combine
from metalax.mtl.aggregation.base import count_tasks
from metalax.mtl.aggregation.base import gramian


# ---------------------------------------------------------------------------
# PCGrad.


class PCGradState(NamedTuple):
  """State of :func:`pcgrad`: the PRNG key of the next call."""

  key: jax.Array


def _pcgrad_weights(key: jax.Array, gram: jax.Array) -> jax.Array:
  """Weights ``c [T]`` with ``sum_i g_i^PC = sum_j c_j g_j``.

  Each projected gradient is a combination ``g_i^PC = sum_j C[i, j] g_j``;
  projecting ``g_i^PC`` off ``g_j`` changes row ``i`` only, using
  ``g_i^PC . g_j = (C G)[i, j]``.
  """
  num_tasks = gram.shape[0]
  # Row i: a uniformly random order of the tasks (i itself is skipped below).
  orders = jnp.argsort(jax.random.uniform(key, (num_tasks, num_tasks)), axis=1)
  tasks = jnp.arange(num_tasks)
  sq_norms = jnp.diag(gram)

  def project(coefficients, partners):
    dots = jnp.sum(coefficients * gram[partners], axis=1)  # g_i^PC . g_j, [T]
    safe = jnp.where(sq_norms[partners] > 0, sq_norms[partners], 1.0)
    conflict = (dots < 0) & (partners != tasks) & (sq_norms[partners] > 0)
    scale = jnp.where(conflict, dots / safe, 0.0)
    return coefficients.at[tasks, partners].add(-scale), None

  coefficients, _ = jax.lax.scan(project, jnp.eye(num_tasks, dtype=gram.dtype), orders.T,
                                 unroll=True)
  return jnp.sum(coefficients, axis=0)


def pcgrad(key: jax.Array, *, reduction: str = "sum") -> Aggregator:
  r"""Projecting Conflicting Gradients, PCGrad (Yu et al., 2020).

  For every task ``i``, in a random order of the other tasks ``j`` (drawn anew
  for each ``i`` at every call, paper Algorithm 1),

  .. math::
    g_i^{PC} \leftarrow g_i^{PC} - \frac{\min(g_i^{PC} \cdot g_j, 0)}{\|g_j\|^2} g_j ,

  and the update is :math:`\sum_i g_i^{PC}` (the paper's sum; ``reduction="mean"``
  divides by ``T``, as the CAGrad authors' PCGrad). Dot products use the
  original ``g_j`` and the partly projected ``g_i^{PC}``, as the reference
  implementations. LibMTL's loop also lets a task project onto itself, which
  the paper excludes; we follow the paper.

  Args:
    key: a PRNG key (``jax.random.key``) for the random task orders; it lives in
      the state and is split at every call.
    reduction: ``"sum"`` (paper, LibMTL) or ``"mean"``.

  Returns:
    An aggregator with a :class:`PCGradState`.

  Example:
    >>> agg = pcgrad(jax.random.key(0))
    >>> state = agg.init(None)
    >>> update, state = agg.update(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), state)
    >>> update.tolist()  # [0.5, 0.5] + [0, 1]: each projected off the other
    [0.5, 1.5]

  References:
    Yu, Kumar, Gupta, Levine, Hausman & Finn, Gradient Surgery for Multi-Task
    Learning, NeurIPS 2020.
  """
  if reduction not in ("sum", "mean"):
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    next_key, sample_key = jax.random.split(state.key)
    gram = gramian(task_grads)
    weights = _pcgrad_weights(sample_key, gram)
    if reduction == "mean":
      weights = weights / gram.shape[0]
    return combine(weights, task_grads), PCGradState(next_key)

  return Aggregator(lambda params: PCGradState(key), update_fn)


# ---------------------------------------------------------------------------
# GradDrop.


class GradDropState(NamedTuple):
  """State of :func:`graddrop`: the PRNG key of the next call."""

  key: jax.Array


def graddrop(key: jax.Array, *, leak: float | Sequence[float] = 0.0) -> Aggregator:
  r"""Gradient sign dropout, GradDrop (Chen et al., 2020).

  Elementwise over every leaf: with the sign purity
  :math:`P = \frac12\bigl(1 + \frac{\sum_i g_i}{\sum_i |g_i| + 10^{-7}}\bigr)`
  and :math:`U \sim \mathcal U(0, 1)` drawn per element, task ``i`` keeps its
  gradient where :math:`M_i = [P > U][g_i > 0] + [P < U][g_i < 0]` is 1, and
  the update is :math:`\sum_i (\ell_i + (1 - \ell_i) M_i)\, g_i` (lines 10-15 of
  the paper's Algorithm 1 with ``f`` the identity, as TorchJD's ``GradDrop``;
  ``leak = 0`` by default as in LibMTL). Where all tasks agree in sign the
  update is the plain sum.

  The paper applies GradDrop to gradients with respect to a shared activation,
  after summing over the batch with a sign correction by the activation's sign
  (LibMTL does this); here it acts on whatever per-task gradients it is given:
  parameter gradients (as TorchJD and the CAGrad authors' code) or
  representation gradients prepared that way.

  Args:
    key: a PRNG key (``jax.random.key``); it lives in the state and is split at
      every call.
    leak: ``l`` scalar or ``[T]`` leak coefficients in ``[0, 1]``.

  Returns:
    An aggregator with a :class:`GradDropState`.

  References:
    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, Just Pick a Sign:
    Optimizing Deep Multitask Models with Gradient Sign Dropout, NeurIPS 2020.
  """
  # Checked in NumPy (the constructor may run inside jit), kept in float64 and
  # cast to each gradient leaf's dtype when used.
  leak_array = np.asarray(leak, np.float64)
  if leak_array.ndim > 1 or np.any((leak_array < 0) | (leak_array > 1)):
    raise ValueError(f"leak must be a scalar or [T] vector in [0, 1], got {leak!r}.")

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    num_tasks = count_tasks(task_grads)
    if leak_array.ndim == 1 and leak_array.shape[0] != num_tasks:
      raise ValueError(f"leak has {leak_array.shape[0]} entries but task_grads have "
                       f"{num_tasks} tasks.")
    next_key, sample_key = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(task_grads)
    keys = jax.random.split(sample_key, len(leaves))

    def drop(leaf, leaf_key):
      purity = 0.5 * (1.0 + jnp.sum(leaf, 0) / (jnp.sum(jnp.abs(leaf), 0) + 1e-7))
      uniform = jax.random.uniform(leaf_key, leaf.shape[1:], purity.dtype)
      keep = (((purity > uniform) & (leaf > 0)) | ((purity < uniform) & (leaf < 0)))
      leak_t = jnp.broadcast_to(jnp.asarray(leak_array, leaf.dtype), (num_tasks,))
      leak_t = leak_t.reshape((num_tasks,) + (1,) * (leaf.ndim - 1))
      return jnp.sum((leak_t + (1 - leak_t) * keep.astype(leaf.dtype)) * leaf, axis=0)

    update = jax.tree.unflatten(
        treedef, [drop(leaf, k) for leaf, k in zip(leaves, keys, strict=True)])
    return update, GradDropState(next_key)

  return Aggregator(lambda params: GradDropState(key), update_fn)
