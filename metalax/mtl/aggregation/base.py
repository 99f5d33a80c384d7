"""The aggregator interface, per-task gradients, the Gram matrix and linear scalarisation.

Helpers shared by the aggregator modules: :func:`gramian` (the ``[T, T]`` inner
products of the task gradients, summed leaf by leaf), :func:`combine` (``sum_i
w_i g_i`` on every leaf) and :func:`weights_aggregator` (a stateless aggregator
from a function of the Gram matrix).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
  from optax.experimental import aggregating as _optax_aggregating
  Aggregator = _optax_aggregating.Aggregator
except (ImportError, AttributeError):  # optax without experimental aggregating.

  class Aggregator(NamedTuple):  # type: ignore[no-redef]
    """``(init, update)`` of an aggregator, as in ``optax.experimental.aggregating``."""

    init: Callable[..., Any]
    update: Callable[..., Any]


TaskGrads = Any
"""A pytree whose leaves are ``[T, *param_shape]``: one gradient per task."""

HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------
# Per-task gradients and helpers.


def task_gradients(
    task_losses_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
) -> tuple[Any, TaskGrads]:
  """Task losses and per-task gradients in one vectorised pass.

  One forward pass and ``T`` backward passes batched by ``jax.vmap`` over the
  rows of the identity (what ``jax.jacrev`` does), never a Python loop.

  Args:
    task_losses_fn: ``task_losses_fn(params, *args) -> task_losses [T]`` (or
      ``(task_losses [T], aux)`` with ``has_aux=True``).
    params: the pytree to differentiate with respect to.
    *args: further arguments of ``task_losses_fn`` (not differentiated).
    has_aux: whether ``task_losses_fn`` also returns auxiliary data.

  Returns:
    ``(task_losses [T], task_grads)``, or ``((task_losses, aux), task_grads)``
    with ``has_aux=True``, like ``jax.value_and_grad``; ``task_grads`` has the
    structure of ``params`` with leaves ``[T, *param_shape]``.

  Raises:
    ValueError: if ``task_losses_fn`` does not return a vector.

  Example:
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> fn = lambda p: jnp.stack([p["w"][0] ** 2, p["w"][0] * p["w"][1]])
    >>> losses, grads = task_gradients(fn, params)
    >>> grads["w"].tolist()
    [[2.0, 0.0], [2.0, 1.0]]
  """
  fn = lambda p: task_losses_fn(p, *args)
  if has_aux:
    task_losses, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
  else:
    task_losses, vjp_fn = jax.vjp(fn, params)
  if not hasattr(task_losses, "ndim") or task_losses.ndim != 1:
    shape = getattr(task_losses, "shape", type(task_losses))
    raise ValueError(
        "task_losses_fn must return the task losses as a vector [T], got "
        f"{tuple(shape) if isinstance(shape, tuple) else shape}.")
  cotangents = jnp.eye(task_losses.shape[0], dtype=task_losses.dtype)
  (task_grads,) = jax.vmap(vjp_fn)(cotangents)
  if has_aux:
    return (task_losses, aux), task_grads
  return task_losses, task_grads


def count_tasks(task_grads: TaskGrads) -> int:
  leaves = jax.tree.leaves(task_grads)
  if not leaves:
    raise ValueError("task_grads has no leaves: expected a pytree of [T, *param_shape] arrays.")
  shapes = [tuple(getattr(leaf, "shape", ())) for leaf in leaves]
  if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
    raise ValueError(
        "every leaf of task_grads must have the same leading task axis [T, ...]; "
        f"got leaf shapes {shapes}.")
  return shapes[0][0]


def task_gradient_norms(task_grads: TaskGrads) -> jax.Array:
  """Euclidean norm of each task's gradient over all leaves.

  Args:
    task_grads: a pytree with leaves ``[T, *param_shape]``.

  Returns:
    ``[T]`` norms.
  """
  count_tasks(task_grads)
  squares = [jnp.sum(jnp.square(leaf), axis=tuple(range(1, leaf.ndim)))
             for leaf in jax.tree.leaves(task_grads)]
  return jnp.sqrt(sum(squares))


def _swap_minor(leaf: jax.Array) -> jax.Array:
  """A per-task matrix leaf ``[T, a, b]`` as ``[T, b, a]``; other leaves unchanged.

  The Gram matrix and the weighted sum of the task gradients do not depend on
  the order in which each task's coordinates are flattened, as long as it is
  the same for every task. Flattening a matrix leaf as ``[T, b, a]`` follows
  how XLA computes the per-task gradient of a ``[a, b]`` kernel batched over
  tasks (``delta_t^T x``, one GEMM with the tasks in its rows): flattened as
  ``[T, a, b]``, XLA:CPU copies every per-task gradient into that layout first.
  On the step of ``benchmarks/mtl_speed.py`` at T=10 this made MGDA, CAGrad,
  PCGrad and IMTL-G 5-13% faster (BUILD_NOTES.md).
  """
  return jnp.swapaxes(leaf, 1, 2) if leaf.ndim == 3 else leaf


def gramian(task_grads: TaskGrads) -> jax.Array:
  """``[T, T]`` inner products of the flattened task gradients, leaf by leaf (see :func:`_swap_minor`)."""
  num_tasks = count_tasks(task_grads)
  leaves = jax.tree.leaves(task_grads)
  dtype = jnp.result_type(jnp.float32, *[leaf.dtype for leaf in leaves])
  gram = jnp.zeros((num_tasks, num_tasks), dtype)
  for leaf in leaves:
    flat = _swap_minor(leaf).reshape(num_tasks, -1).astype(dtype)
    gram = gram + jnp.matmul(flat, flat.T, precision=HIGHEST)
  return gram


def as_constant(values: Any) -> Any:
  """A constructor argument kept at full precision: float64 NumPy, or the array itself if traced.

  Cast to the gradients' dtype where used, so that float64 gradients (x64)
  meet float64 hyperparameters and float32 ones float32.
  """
  if isinstance(values, jax.core.Tracer):
    return values
  return np.asarray(values, np.float64)


def combine(weights: jax.Array, task_grads: TaskGrads) -> Any:
  """``sum_i weights[i] * task_grads[i]`` on every leaf."""
  def weighted_sum(leaf):
    total = jnp.tensordot(weights.astype(leaf.dtype), _swap_minor(leaf), axes=1, precision=HIGHEST)
    return total.T if leaf.ndim == 3 else total

  return jax.tree.map(weighted_sum, task_grads)


def weights_aggregator(weights_fn: Callable[[jax.Array], jax.Array]) -> Aggregator:
  """A stateless aggregator from ``weights_fn(gramian [T, T]) -> weights [T]``."""

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    weights = weights_fn(gramian(task_grads))
    return combine(weights, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# Linear scalarisation.


def linear_scalarization(weights: Sequence[float] | jax.Array | None = None) -> Aggregator:
  """Weighted sum of the task gradients, ``sum_i weights[i] g_i``.

  The gradient of ``sum_i weights[i] L_i``; with ``weights=None`` the plain sum.
  Use it for task-specific parameters next to another aggregator on the shared
  ones (see the module docstring).

  Args:
    weights: ``[T]`` task weights, or None for all ones; applied in each
      gradient leaf's dtype.

  Returns:
    A stateless aggregator.
  """
  fixed = None if weights is None else as_constant(weights)

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    num_tasks = count_tasks(task_grads)
    if fixed is not None and fixed.shape != (num_tasks,):
      raise ValueError(f"linear_scalarization has weights of shape {tuple(fixed.shape)} "
                       f"but task_grads have {num_tasks} tasks.")
    w = jnp.ones((num_tasks,), jnp.int32) if fixed is None else fixed   # combine casts per leaf
    return combine(w, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


