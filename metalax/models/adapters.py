"""Turn a Flax linen module, a Flax NNX module or a plain function into ``apply_fn(params, x)``.

metalax never holds a model object: every learner takes an ``apply_fn`` and a
parameter pytree. These adapters are the only place a model library is seen.
"""

import inspect
from typing import Any, Callable

import flax.linen as nn
from flax import nnx
import jax

from metalax.types import ApplyFn, Params


def from_linen(module: nn.Module, **apply_kwargs: Any) -> ApplyFn:
  """``apply_fn`` of a linen module whose variables are ``{"params": ...}`` only.

  Args:
    module: a linen module. It must keep no mutable collections (no running
      BatchNorm statistics), since inner loops differentiate through it.
    **apply_kwargs: fixed keyword arguments for ``module.apply`` calls.

  Returns:
    ``apply_fn(params, inputs) = module.apply({"params": params}, inputs)``.

  Example:
    >>> model = metalax.models.MLP(features=(40, 40), num_outputs=1)
    >>> params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
    >>> apply_fn = from_linen(model)
  """
  if not isinstance(module, nn.Module):
    raise ValueError(f"from_linen expects a flax.linen.Module, got {type(module).__name__}.")

  def apply_fn(params: Params, inputs: jax.Array) -> jax.Array:
    return module.apply({"params": params}, inputs, **apply_kwargs)

  return apply_fn


def from_nnx(module: nnx.Module) -> tuple[ApplyFn, Params]:
  """Split an NNX module into ``apply_fn`` and its ``nnx.Param`` state.

  Non-parameter state (e.g. RNG counters) is captured as it is now and copied
  into every call, so ``apply_fn`` is pure and never mutates ``module``.

  Args:
    module: an ``nnx.Module`` called as ``module(inputs)``.

  Returns:
    ``(apply_fn, params)``: ``params`` is the module's ``nnx.Param`` state (an
    ``nnx.State`` pytree), and ``apply_fn(params, inputs)`` calls a fresh copy
    of the module with those parameters.
  """
  if not isinstance(module, nnx.Module):
    raise ValueError(f"from_nnx expects a flax.nnx.Module, got {type(module).__name__}.")
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def apply_fn(params: Params, inputs: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params, rest, copy=True)(inputs)

  return apply_fn, params


def from_function(fn: Callable[..., jax.Array], **kwargs: Any) -> ApplyFn:
  """``apply_fn`` of a plain function ``fn(params, inputs, **kwargs)``.

  Args:
    fn: a pure function of a parameter pytree and a batch of inputs.
    **kwargs: fixed keyword arguments (e.g. static configuration).

  Returns:
    ``apply_fn(params, inputs) = fn(params, inputs, **kwargs)``.

  Raises:
    ValueError: if ``fn`` cannot be called with two positional arguments.
  """
  if not callable(fn):
    raise ValueError(f"from_function expects a callable, got {type(fn).__name__}.")
  try:
    inspect.signature(fn).bind(None, None, **kwargs)
  except TypeError as e:
    raise ValueError(f"from_function expects fn(params, inputs, **kwargs): {e}.") from None
  except ValueError:  # builtins without a signature
    pass

  def apply_fn(params: Params, inputs: jax.Array) -> jax.Array:
    return fn(params, inputs, **kwargs)

  return apply_fn
