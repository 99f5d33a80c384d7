"""Core types: parameter trees, model and loss signatures, and the data pytrees.

Shapes use ``n`` for the number of examples in a batch and ``B`` for a leading
task axis. A batch of episodes is an :class:`Episode` whose every leaf has that
extra leading ``[B]`` axis.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

Params = Any
"""A pytree of arrays: the parameters of a model."""

ApplyFn = Callable[..., jax.Array]
"""``apply_fn(params, inputs [n, *input_shape]) -> outputs [n, *output_shape]``.

The PRNG-key contract for stochastic models (dropout, noise layers): such a
model also accepts a keyword PRNG key, ``apply_fn(params, inputs, key=key)``
with ``key`` from ``jax.random.key``, and its outputs are a deterministic
function of ``(params, inputs, key)``. Called without a key (or ``key=None``),
it must be deterministic too (e.g. dropout off, or a fixed mask). The adapters
in :mod:`metalax.models` (``from_linen``, ``from_nnx``, ``from_function``) all
return functions of this form. Every learner and the generic code in
:mod:`metalax.meta` call ``apply_fn`` *without* a key unless the caller gave
them one (``loss(meta_params, episode, key=key)``,
``batch_loss(learner)(meta_params, episodes, key)``, ...), so a plain
``apply_fn(params, inputs)`` keeps working; with a key they give every call
of ``apply_fn`` its own key derived from it (see :class:`metalax.meta.MetaLearner`).
"""

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``loss_fn(outputs [n, ...], labels [n, ...]) -> per-example losses [n]``."""


@flax.struct.dataclass
class Batch:
  """Labelled examples of one task.

  Attributes:
    inputs: ``[n, *input_shape]``.
    labels: ``[n]`` int32 class indices in ``[0, num_ways)``, or
      ``[n, *target_shape]`` float targets for regression.
  """

  inputs: jax.Array
  labels: jax.Array


@flax.struct.dataclass
class Episode:
  """A task's support set (used to adapt) and query set (used to evaluate).

  Attributes:
    support: a :class:`Batch` with ``n = num_ways * num_shots`` (or ``num_shots``
      points for regression).
    query: a :class:`Batch` with ``n = num_ways * num_queries``.
  """

  support: Batch
  query: Batch


def apply_model(apply_fn: ApplyFn, params: Params, inputs: jax.Array,
                key: jax.Array | None = None) -> jax.Array:
  """``apply_fn(params, inputs)``, or ``apply_fn(params, inputs, key=key)`` when a key is given.

  The one place the key contract of :data:`ApplyFn` is applied: a model that
  takes no key is never passed one unless the caller asked for randomness.
  """
  if key is None:
    return apply_fn(params, inputs)
  return apply_fn(params, inputs, key=key)


def is_classification(labels: jax.Array) -> bool:
  """True when ``labels`` are integer class indices, False for regression."""
  return jnp.issubdtype(labels.dtype, jnp.integer)


def check_batch(batch: Batch, name: str = "batch", batch_dims: int = 0) -> None:
  """Checks that a :class:`Batch`'s labels match its inputs.

  Args:
    batch: the batch to check.
    name: how the batch is called in error messages.
    batch_dims: number of leading task axes (0 for one task, 1 for ``[B]``).

  Raises:
    ValueError: if a field is not an array, the inputs have no example axis,
      or inputs and labels disagree on the number of examples.
  """
  if not isinstance(batch, Batch):
    raise ValueError(f"{name} must be a metalax.types.Batch, got {type(batch).__name__}.")
  for field in ("inputs", "labels"):
    value = getattr(batch, field)
    if not hasattr(value, "shape"):
      raise ValueError(f"{name}.{field} must be an array, got {type(value).__name__}.")
    if value.ndim < batch_dims + 1:
      raise ValueError(
          f"{name}.{field} must have shape [{'B, ' * batch_dims}n, ...] "
          f"(at least {batch_dims + 1} axes), got shape {tuple(value.shape)}.")
  lead_inputs = batch.inputs.shape[:batch_dims + 1]
  lead_labels = batch.labels.shape[:batch_dims + 1]
  if lead_inputs != lead_labels:
    raise ValueError(
        f"{name}.labels must match {name}.inputs on the leading "
        f"{'[B, n]' if batch_dims else '[n]'} axes: inputs have shape "
        f"{tuple(batch.inputs.shape)}, labels have shape {tuple(batch.labels.shape)}.")
  if batch.inputs.shape[batch_dims] == 0:
    raise ValueError(f"{name} is empty: inputs have shape {tuple(batch.inputs.shape)}.")


def check_episode(episode: Episode, batch_dims: int = 0) -> None:
  """Checks an :class:`Episode` (or a ``[B]`` batch of them when ``batch_dims=1``).

  Support and query must each be consistent (see :func:`check_batch`), share
  the per-example input shape and the label rank and dtype kind, and, for a
  batch of episodes, share the task axis.

  Raises:
    ValueError: naming the field, the expected shape and the shape received;
      for ``batch_dims=1``, saying so when ``episode`` is one unbatched episode.
  """
  if not isinstance(episode, Episode):
    raise ValueError(f"expected a metalax.types.Episode, got {type(episode).__name__}.")
  if batch_dims:
    try:
      _check_episode(episode, batch_dims)
    except ValueError as error:
      try:
        _check_episode(episode, 0)
      except ValueError:
        raise error from None
      raise ValueError(
          "expected a batch of episodes with a leading task axis [B] on every field, got one "
          f"unbatched episode (support inputs {tuple(episode.support.inputs.shape)}, labels "
          f"{tuple(episode.support.labels.shape)}): add the axis with "
          "jax.tree.map(lambda x: x[None], episode), or use metalax.meta.episode_loss for one "
          "episode.") from None
  else:
    _check_episode(episode, batch_dims)


def _check_episode(episode: Episode, batch_dims: int) -> None:
  check_batch(episode.support, "episode.support", batch_dims)
  check_batch(episode.query, "episode.query", batch_dims)
  support, query = episode.support, episode.query
  if support.inputs.shape[batch_dims + 1:] != query.inputs.shape[batch_dims + 1:]:
    raise ValueError(
        "episode.support.inputs and episode.query.inputs must have the same "
        f"per-example shape: got {tuple(support.inputs.shape)} and "
        f"{tuple(query.inputs.shape)}.")
  if (support.labels.shape[batch_dims + 1:] != query.labels.shape[batch_dims + 1:]
      or is_classification(support.labels) != is_classification(query.labels)):
    raise ValueError(
        "episode.support.labels and episode.query.labels must have the same "
        f"per-example shape and kind: got {tuple(support.labels.shape)} "
        f"{support.labels.dtype} and {tuple(query.labels.shape)} {query.labels.dtype}.")
  if batch_dims and support.inputs.shape[:batch_dims] != query.inputs.shape[:batch_dims]:
    raise ValueError(
        "support and query must share the leading task axis [B]: got "
        f"{tuple(support.inputs.shape)} and {tuple(query.inputs.shape)}.")
