"""Turn a Flax linen module, a Flax NNX module or a plain function into ``apply_fn(params, x)``.

metalax never holds a model object: every learner takes an ``apply_fn`` and a
parameter pytree. These adapters are the only place a model library is seen.

Every adapter returns ``apply_fn(params, inputs, key=None)``, the PRNG-key
contract of :data:`metalax.types.ApplyFn`: with a ``jax.random.key`` the
model's random layers (dropout) draw from it, so the same key gives the same
outputs and different keys different masks; without one the call is
deterministic. The learners pass a key only when they are given one.
"""

import inspect
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import nnx
import jax

from metalax.types import ApplyFn, Params


def from_linen(module: nn.Module, *, rng_names: Sequence[str] = ("dropout",),
               **apply_kwargs: Any) -> ApplyFn:
  """``apply_fn`` of a linen module whose variables are ``{"params": ...}`` only.

  Args:
    module: a linen module. It must keep no mutable collections (no running
      BatchNorm statistics), since inner loops differentiate through it.
    rng_names: the rng streams the module draws from (``self.make_rng(name)``;
      ``nn.Dropout`` uses ``"dropout"``). Given a key, ``apply_fn`` passes
      ``rngs`` with one key per name, split from it.
    **apply_kwargs: fixed keyword arguments for ``module.apply`` calls (e.g.
      ``deterministic=False`` for a module with dropout switched by an argument).

  Returns:
    ``apply_fn(params, inputs, key=None) = module.apply({"params": params},
    inputs, rngs=..., **apply_kwargs)``; ``rngs`` only when a key is given
    (a module that needs rngs then raises flax's error asking for them).

  Raises:
    ValueError: if ``module`` is not a linen module or ``rng_names`` is not a
      non-empty sequence of strings.

  Example:
    >>> model = metalax.models.MLP(features=(40, 40), num_outputs=1)
    >>> params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
    >>> apply_fn = from_linen(model)
  """
  if not isinstance(module, nn.Module):
    raise ValueError(f"from_linen expects a flax.linen.Module, got {type(module).__name__}.")
  if isinstance(rng_names, str) or not rng_names or not all(isinstance(n, str) for n in rng_names):
    raise ValueError(f"from_linen: rng_names must be a non-empty sequence of strings, got {rng_names!r}.")
  rng_names = tuple(rng_names)

  def apply_fn(params: Params, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    if key is None:
      return module.apply({"params": params}, inputs, **apply_kwargs)
    rngs = dict(zip(rng_names, jax.random.split(key, len(rng_names))))
    return module.apply({"params": params}, inputs, rngs=rngs, **apply_kwargs)

  return apply_fn


def from_nnx(module: nnx.Module, *, discard_state_updates: bool = False,
             **call_kwargs: Any) -> tuple[ApplyFn, Params]:
  """Split an NNX module into ``apply_fn`` and its ``nnx.Param`` state.

  ``apply_fn`` is pure: every call runs a fresh copy of the module (``nnx.merge
  (..., copy=True)``) and never mutates ``module``. Its random streams
  (``nnx.Rngs``, e.g. for ``nnx.Dropout``): given a key, every stream of the
  copy is reseeded from it (``nnx.reseed``, stream ``i`` of the sorted stream
  names gets ``jax.random.split(key, num_streams)[i]``), so each key draws its
  own masks; without a key, the streams start from their state at the time of
  the split, so every call draws the same masks (deterministic). To run without
  dropout, e.g. for evaluation, split the module in evaluation mode
  (``module.eval()``, or ``nnx.view``) or pass ``deterministic=True`` as a
  call keyword if the module takes it.

  Other non-parameter state (``nnx.BatchStat`` running statistics, or any
  ``nnx.Variable`` the module assigns) cannot be returned by a pure
  ``apply_fn``. A call that updates such state raises ``ValueError``, unless
  ``discard_state_updates=True``: then the updates are dropped and the state
  stays as it was at the split. With ``nnx.BatchNorm`` in training mode that is
  MAML's batch normalisation: each call normalises with its own batch's
  statistics, and the running averages are never used or updated. With
  ``nnx.BatchNorm(use_running_average=True)`` (or ``module.eval()``) the stored
  averages are read and nothing is updated, so no flag is needed.

  Args:
    module: an ``nnx.Module`` called as ``module(inputs, **call_kwargs)``.
    discard_state_updates: drop updates of non-parameter state instead of raising.
    **call_kwargs: fixed keyword arguments for every call of the module.

  Returns:
    ``(apply_fn, params)``: ``params`` is the module's ``nnx.Param`` state (an
    ``nnx.State`` pytree), and ``apply_fn(params, inputs, key=None)`` calls a
    fresh copy of the module with those parameters.

  Raises:
    ValueError: if ``module`` is not an NNX module; (when called) if the call
      updates non-parameter state and ``discard_state_updates`` is False.

  Example:
    >>> model = MyNnxNet(nnx.Rngs(params=0, dropout=1))   # with nnx.Dropout
    >>> apply_fn, params = metalax.models.from_nnx(model)
    >>> outputs = apply_fn(params, inputs, key=jax.random.key(2))
  """
  if not isinstance(module, nnx.Module):
    raise ValueError(f"from_nnx expects a flax.nnx.Module, got {type(module).__name__}.")
  graphdef, params, rng_state, other = nnx.split(module, nnx.Param, nnx.RngState, ...)
  is_variable = lambda x: isinstance(x, nnx.Variable)
  streams = sorted({v.tag for v in jax.tree.leaves(rng_state, is_leaf=is_variable)
                    if isinstance(v, nnx.RngKey)})
  other_paths = [jax.tree_util.keystr(path)
                 for path, _ in jax.tree_util.tree_flatten_with_path(other)[0]]
  other_leaves = jax.tree.leaves(other)

  def apply_fn(params: Params, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    model = nnx.merge(graphdef, params, rng_state, other, copy=True)
    if key is not None and streams:
      nnx.reseed(model, **dict(zip(streams, jax.random.split(key, len(streams)))))
    outputs = model(inputs, **call_kwargs)
    if not discard_state_updates:
      after = jax.tree.leaves(nnx.split(model, nnx.Param, nnx.RngState, ...)[3])
      changed = [path for path, a, b in zip(other_paths, other_leaves, after) if a is not b]
      if changed or len(after) != len(other_leaves):
        raise ValueError(
            f"from_nnx: the module updated non-parameter state {changed or '(new variables)'} "
            "(e.g. BatchNorm running statistics in training mode), which a pure apply_fn cannot "
            "return. Use LayerNorm/GroupNorm, BatchNorm in evaluation mode (use_running_average=True), "
            "or from_nnx(module, discard_state_updates=True) to normalise with each batch's own "
            "statistics and drop the updates.")
    return outputs

  return apply_fn, params


def from_function(fn: Callable[..., jax.Array], **kwargs: Any) -> ApplyFn:
  """``apply_fn`` of a plain function ``fn(params, inputs, **kwargs)``.

  Args:
    fn: a pure function of a parameter pytree and a batch of inputs; if it
      takes a ``key`` keyword (or ``**kwargs``), a stochastic one, it receives
      the PRNG key given to ``apply_fn``; otherwise the key is ignored (the
      model is deterministic).
    **kwargs: fixed keyword arguments (e.g. static configuration).

  Returns:
    ``apply_fn(params, inputs, key=None) = fn(params, inputs, **kwargs)``,
    with ``key=key`` added when a key is given and ``fn`` takes one.

  Raises:
    ValueError: if ``fn`` cannot be called with two positional arguments.
  """
  if not callable(fn):
    raise ValueError(f"from_function expects a callable, got {type(fn).__name__}.")
  takes_key = True
  try:
    signature = inspect.signature(fn)
  except ValueError:  # builtins without a signature
    signature = None
  if signature is not None:
    try:
      signature.bind(None, None, **kwargs)
    except TypeError as e:
      raise ValueError(f"from_function expects fn(params, inputs, **kwargs): {e}.") from None
    takes_key = "key" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())

  def apply_fn(params: Params, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    if key is None or not takes_key:
      return fn(params, inputs, **kwargs)
    return fn(params, inputs, key=key, **kwargs)

  return apply_fn
