"""The inner loop shared by every gradient-based learner.

Each inner step is ``params <- params + update(grad objective(params))`` run
with ``jax.lax.scan``; which parameters it adapts is set by a mask, how the
update is made by an :class:`InnerUpdate` (any optax transform, or Meta-SGD's
learned rates), and how the meta-gradient flows through the loop by
``first_order`` (drop second-order terms) and ``remat`` (recompute each step in
the backward pass instead of storing its activations).
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalax.types import Params

Mask = Any
"""A pytree of bools matching the parameters (True: adapted in the inner loop),
or a callable ``params -> pytree of bools``, or ``None`` for all parameters."""


class InnerUpdate(NamedTuple):
  """How one inner step turns gradients into parameter updates.

  Attributes:
    init: ``init(adapted, meta_params) -> state``.
    update: ``update(grads, state, adapted, meta_params) -> (updates, state)``;
      ``grads``, ``adapted`` and ``updates`` are lists of the adapted leaves.
  """

  init: Callable[[list[jax.Array], Any], Any]
  update: Callable[[list[jax.Array], Any, list[jax.Array], Any], tuple[list[jax.Array], Any]]


def from_optax(optimizer: optax.GradientTransformation) -> InnerUpdate:
  """An :class:`InnerUpdate` from an optax transform with fixed hyperparameters."""
  return InnerUpdate(
      init=lambda adapted, meta_params: optimizer.init(adapted),
      update=lambda grads, state, adapted, meta_params: optimizer.update(grads, state, adapted))


def inner_optimizer_of(inner_lr: float | None,
                       inner_optimizer: optax.GradientTransformation | None) -> optax.GradientTransformation:
  """``optax.sgd(inner_lr)``, or the given transform; exactly one must be set.

  Raises:
    ValueError: if both or neither are given, or ``inner_lr`` is not a positive number.
  """
  if (inner_lr is None) == (inner_optimizer is None):
    raise ValueError("give exactly one of inner_lr (plain SGD) or inner_optimizer (an optax "
                     f"GradientTransformation); got inner_lr={inner_lr!r}, "
                     f"inner_optimizer={inner_optimizer!r}.")
  if inner_optimizer is not None:
    if not isinstance(inner_optimizer, optax.GradientTransformation):
      raise ValueError("inner_optimizer must be an optax.GradientTransformation, got "
                       f"{type(inner_optimizer).__name__}.")
    return inner_optimizer
  check_positive("inner_lr", inner_lr)
  return optax.sgd(inner_lr)


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a finite Python number > 0."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
    raise ValueError(f"{name} must be a positive number, got {value!r}.")


def check_num_steps(num_steps: Any) -> int:
  """Returns ``num_steps`` if it is an int >= 0 (0: no adaptation), else raises ValueError."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"num_steps must be an int >= 0 (0 means no adaptation), got {num_steps!r}.")
  return num_steps


class Partition(NamedTuple):
  """Splits a parameter pytree into the leaves the inner loop adapts and the rest."""

  treedef: Any
  flags: tuple[bool, ...]

  @classmethod
  def of(cls, params: Params, mask: Mask) -> "Partition":
    """The partition of ``params`` given by ``mask`` (see :data:`Mask`)."""
    leaves, treedef = jax.tree.flatten(params)
    if mask is None:
      return cls(treedef, (True,) * len(leaves))
    if callable(mask):
      mask = mask(params)
    try:
      flags = treedef.flatten_up_to(mask)
    except (ValueError, TypeError) as e:
      # Another container type with the same keys (a dict mask for nnx.State
      # parameters): match each parameter to the mask entry on a prefix of its path.
      flags = _flags_by_path(params, mask, e)
    flags = tuple(bool(f) for f in flags)
    if not any(flags):
      raise ValueError("inner_mask selects no parameter to adapt.")
    return cls(treedef, flags)

  def split(self, tree: Params) -> tuple[list[jax.Array], list[jax.Array]]:
    leaves = self.treedef.flatten_up_to(tree)
    adapted = [x for x, f in zip(leaves, self.flags) if f]
    frozen = [x for x, f in zip(leaves, self.flags) if not f]
    return adapted, frozen

  def merge(self, adapted: list[jax.Array], frozen: list[jax.Array]) -> Params:
    adapted_it, frozen_it = iter(adapted), iter(frozen)
    return self.treedef.unflatten([next(adapted_it) if f else next(frozen_it) for f in self.flags])


def path_names(path: tuple) -> tuple:
  """A key path as plain names: dict keys, attribute names, sequence indices."""
  names = []
  for entry in path:
    for field in ("key", "name", "idx"):
      if hasattr(entry, field):
        names.append(getattr(entry, field))
        break
    else:
      names.append(str(entry))
  return tuple(names)


def _flags_by_path(params: Params, mask: Any, error: Exception) -> list[bool]:
  """Flags for the leaves of ``params`` from the mask entries whose paths prefix theirs.

  ``nnx.State`` parameters flatten to paths such as ``("head", "kernel", "value")``
  and a dict mask to ``("head", "kernel")`` or ``("head",)``; each parameter
  takes the flag of the longest mask path that is a prefix of its own.
  """
  mask_paths = {path_names(path): flag for path, flag in jax.tree_util.tree_flatten_with_path(mask)[0]}
  flags = []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = path_names(path)
    matches = [names[:k] for k in range(len(names), -1, -1) if names[:k] in mask_paths]
    if not matches:
      raise ValueError(f"inner_mask must be a pytree of bools with the structure of params (or a prefix "
                       f"of it): no mask entry for the parameter at {jax.tree_util.keystr(path)} "
                       f"({error}).") from None
    flags.append(mask_paths[matches[0]])
  return flags


def inner_loop(objective: Callable[..., jax.Array], adapted: list[jax.Array],
               state: Any, update: Callable[[list[jax.Array], Any, list[jax.Array]], tuple[list[jax.Array], Any]],
               *, num_steps: int, first_order: bool = False, remat: bool = False,
               key: jax.Array | None = None) -> list[jax.Array]:
  """Runs ``num_steps`` inner steps of gradient-based adaptation with ``lax.scan``.

  Args:
    objective: scalar inner loss of the adapted leaves, ``objective(adapted)``;
      ``objective(adapted, step_key)`` when ``key`` is given.
    adapted: the leaves to adapt, at their initial values.
    state: the initial update state.
    update: ``update(grads, state, adapted) -> (updates, state)``.
    num_steps: number of steps (static).
    first_order: if True, inner gradients are ``stop_gradient``-ed, so the
      meta-gradient drops second-order terms (first-order MAML).
    remat: if True, the backward pass recomputes the inner loop instead of
      storing it: each step and each segment of ``isqrt(num_steps)`` steps is
      a ``jax.checkpoint``, so only the parameters and update state at segment
      boundaries and within one segment are kept: memory grows like
      ``sqrt(num_steps)`` instead of linearly, for about one extra forward pass.
    key: optional PRNG key; step ``i`` gets ``jax.random.split(key, num_steps)[i]``
      (the key contract of :mod:`metalax.meta.base`).

  Returns:
    The adapted leaves after ``num_steps`` steps.
  """

  def step(carry, step_key):
    params, state = carry
    grads = jax.grad(objective)(params) if step_key is None else jax.grad(objective)(params, step_key)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, state = update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  keys = None if key is None else jax.random.split(key, num_steps)
  carry = (adapted, state)
  if not remat:
    carry, _ = jax.lax.scan(step, carry, keys, length=num_steps)
    return carry[0]
  # Checkpoint every step, and also every segment of ~sqrt(num_steps) steps: the
  # backward pass keeps only the carries at segment boundaries, then recomputes
  # one segment at a time, so memory grows like 2 * sqrt(num_steps) carries.
  step = jax.checkpoint(step)
  length = max(1, math.isqrt(num_steps))
  num_segments, rest = divmod(num_steps, length)

  @jax.checkpoint
  def segment(carry, segment_keys):
    return jax.lax.scan(step, carry, segment_keys, length=length)[0], None

  head = rest_keys = None
  if keys is not None:
    head = keys[:num_segments * length].reshape((num_segments, length))
    rest_keys = keys[num_segments * length:]
  carry, _ = jax.lax.scan(segment, carry, head, length=num_segments)
  carry, _ = jax.lax.scan(step, carry, rest_keys, length=rest)
  return carry[0]


def squared_distance(a: list[jax.Array], b: list[jax.Array]) -> jax.Array:
  """``sum ||a_i - b_i||^2`` over matching leaves."""
  return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(a, b))


def conjugate_gradient(matvec: Callable[[Any], Any], b: Any, num_steps: int) -> Any:
  """``num_steps`` iterations of conjugate gradients on ``matvec(x) = b`` from ``x = 0`` (pytrees).

  The iterates of ``jax.scipy.sparse.linalg.cg(matvec, b, tol=0.0,
  maxiter=num_steps)`` (which also stops once the residual is exactly 0), as a
  ``lax.fori_loop`` of fixed length: under ``vmap`` and ``grad`` it traces and
  compiles several times faster than ``cg``'s ``custom_linear_solve`` and
  ``while_loop``.
  """
  dot = lambda u, v: sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v)))
  axpy = lambda a, u, v: jax.tree.map(lambda x, y: (a * x + y).astype(y.dtype), u, v)  # leaves keep their dtype

  def step(_, carry):
    x, r, p, rs = carry
    ap = matvec(p)
    going = rs > 0  # a residual of exactly 0 has converged: the iterate stays
    alpha = jnp.where(going, rs / jnp.where(going, dot(p, ap), 1.0), 0.0)
    x, r = axpy(alpha, p, x), axpy(-alpha, ap, r)
    rs_new = dot(r, r)
    p = axpy(jnp.where(going, rs_new / jnp.where(going, rs, 1.0), 0.0), p, r)
    return x, r, p, rs_new

  x = jax.tree.map(jnp.zeros_like, b)
  return jax.lax.fori_loop(0, num_steps, step, (x, b, b, dot(b, b)))[0]
