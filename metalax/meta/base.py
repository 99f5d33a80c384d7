"""The meta-learner interface and the generic code written once against it.

A meta-learning method is a :class:`MetaLearner`: a NamedTuple of pure
functions, built by a constructor such as :func:`metalax.meta.maml`. The
functions here (:func:`episode_loss`, :func:`batch_loss`, :func:`train_step`,
:func:`evaluate`) work for every method.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from metalax import losses
from metalax.types import Batch, Episode, LossFn, Params, check_episode, is_classification

MetaParams = Any
"""What the outer loop trains: a pytree, e.g. ``{"params": ...}`` (MAML) or
``{"params": ..., "lrs": ...}`` (Meta-SGD)."""

TaskParams = Any
"""What adaptation to one task produces, e.g. the adapted network parameters."""

Aux = dict[str, jax.Array]
"""Per-episode query metrics: always ``"loss"``; ``"accuracy"`` for classification."""


class MetaLearner(NamedTuple):
  """Pure functions of one meta-learning method. Holds no arrays and no state.

  Attributes:
    init: ``init(params) -> meta_params``: from model parameters to what the
      outer loop trains.
    adapt: ``adapt(meta_params, support: Batch) -> task_params``.
    predict: ``predict(task_params, inputs [n, ...]) -> outputs [n, ...]``.
    loss: ``loss(meta_params, episode) -> (objective, aux)``: the scalar whose
      gradient with respect to ``meta_params`` is the method's meta-gradient
      for one episode, and the query metrics :data:`Aux` after adaptation. For
      most methods the objective is the query loss after adaptation; Reptile
      returns a surrogate whose gradient is its pseudo-gradient.
  """

  init: Callable[[Params], MetaParams]
  adapt: Callable[..., TaskParams]
  predict: Callable[[TaskParams, jax.Array], jax.Array]
  loss: Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]


def query_metrics(outputs: jax.Array, labels: jax.Array, loss_fn: LossFn) -> Aux:
  """Mean query loss, and accuracy when ``labels`` are class indices.

  Args:
    outputs: ``[n, ...]`` predictions on the query inputs.
    labels: ``[n]`` int class indices, or ``[n, ...]`` regression targets.
    loss_fn: per-example loss ``loss_fn(outputs, labels) -> [n]``.

  Returns:
    ``{"loss": scalar}``, plus ``{"accuracy": scalar}`` for classification.
  """
  aux = {"loss": jnp.mean(loss_fn(outputs, labels))}
  if is_classification(labels):
    aux["accuracy"] = jnp.mean(losses.accuracy(outputs, labels))
  return aux


def query_loss(adapt: Callable[..., TaskParams], predict: Callable[[TaskParams, jax.Array], jax.Array],
               loss_fn: LossFn) -> Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]:
  """The usual meta-objective: query loss after adapting on the support set.

  Args:
    adapt: a learner's ``adapt``.
    predict: a learner's ``predict``.
    loss_fn: per-example loss.

  Returns:
    ``loss(meta_params, episode, **adapt_kwargs) -> (query loss, aux)``, for
    :attr:`MetaLearner.loss`; keyword arguments (e.g. ``num_steps``) go to ``adapt``.
  """

  def loss(meta_params: MetaParams, episode: Episode, **adapt_kwargs) -> tuple[jax.Array, Aux]:
    task_params = adapt(meta_params, episode.support, **adapt_kwargs)
    aux = query_metrics(predict(task_params, episode.query.inputs), episode.query.labels, loss_fn)
    return aux["loss"], aux

  return loss


def episode_loss(learner: MetaLearner) -> Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]:
  """Meta-objective of one episode, with the episode's shapes checked.

  Args:
    learner: any :class:`MetaLearner`.

  Returns:
    ``loss(meta_params, episode) -> (objective, aux)`` for an unbatched
    :class:`~metalax.types.Episode`.

  Raises:
    ValueError: (when called) if the episode's fields are inconsistent.
  """

  def loss(meta_params: MetaParams, episode: Episode) -> tuple[jax.Array, Aux]:
    check_episode(episode, batch_dims=0)
    return learner.loss(meta_params, episode)

  return loss


def batch_loss(learner: MetaLearner) -> Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]:
  """Meta-objective averaged over a ``[B]`` batch of episodes (vmapped over tasks).

  Args:
    learner: any :class:`MetaLearner`.

  Returns:
    ``loss(meta_params, episodes) -> (mean objective, aux)`` where every leaf
    of ``episodes`` has a leading task axis ``[B]`` and ``aux`` holds the
    means over tasks.

  Example:
    >>> learner = metalax.meta.maml(apply_fn, loss_fn, inner_lr=0.4, num_steps=1)
    >>> loss, aux = metalax.meta.batch_loss(learner)(meta_params, episodes)
  """
  per_task = jax.vmap(learner.loss, in_axes=(None, 0))

  def loss(meta_params: MetaParams, episodes: Episode) -> tuple[jax.Array, Aux]:
    check_episode(episodes, batch_dims=1)
    objectives, aux = per_task(meta_params, episodes)
    return jnp.mean(objectives), jax.tree.map(jnp.mean, aux)

  return loss


def train_step(learner: MetaLearner, optimizer: optax.GradientTransformation, *,
               tasks_per_chunk: int | None = None
               ) -> Callable[[MetaParams, optax.OptState, Episode], tuple[MetaParams, optax.OptState, Aux]]:
  """One meta-training step on a batch of episodes, with any optax optimizer.

  With ``tasks_per_chunk=c`` the ``[B]`` episodes are processed ``c`` at a
  time (``B / c`` chunks under ``lax.scan``, each vmapped, gradients
  accumulated), so the activations kept for the meta-gradient are those of
  ``c`` tasks instead of ``B``: peak memory falls roughly ``B / c``-fold, and on
  CPU the smaller working set is often faster too (BUILD_NOTES.md, "Task
  chunks"). The result equals the whole-batch step up to float rounding. Chunk
  ``i`` holds episodes ``i, i + B/c, i + 2B/c, ...``, so a batch sharded over
  devices along ``B`` stays spread over all of them in every chunk.

  Args:
    learner: any :class:`MetaLearner`.
    optimizer: the outer (meta) optimizer.
    tasks_per_chunk: episodes per chunk, dividing the meta-batch size; None
      for the whole batch at once.

  Returns:
    ``step(meta_params, opt_state, episodes) -> (meta_params, opt_state, metrics)``,
    a pure function to wrap in ``jax.jit``; ``metrics`` holds the batch means
    of the query metrics after adaptation and ``"objective"``.

  Raises:
    ValueError: if ``tasks_per_chunk`` is not a positive integer, or (when the
      step is traced) does not divide the meta-batch size.

  Example:
    >>> optimizer = optax.adam(1e-3)
    >>> step = jax.jit(metalax.meta.train_step(learner, optimizer))
    >>> meta_params, opt_state, metrics = step(meta_params, opt_state, episodes)
  """
  if tasks_per_chunk is not None and (isinstance(tasks_per_chunk, bool) or not isinstance(tasks_per_chunk, int)
                                      or tasks_per_chunk < 1):
    raise ValueError(f"tasks_per_chunk must be a positive int or None, got {tasks_per_chunk!r}.")
  grad_fn = jax.value_and_grad(batch_loss(learner), has_aux=True)

  def chunked_grad_fn(meta_params, episodes):
    check_episode(episodes, batch_dims=1)
    num_tasks = jax.tree.leaves(episodes)[0].shape[0]
    if num_tasks % tasks_per_chunk:
      raise ValueError(f"tasks_per_chunk={tasks_per_chunk} must divide the meta-batch size, got {num_tasks} "
                       "episodes.")
    num_chunks = num_tasks // tasks_per_chunk
    chunks = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((tasks_per_chunk, num_chunks) + x.shape[1:]), 0, 1), episodes)

    def accumulate(total, chunk):
      return jax.tree.map(jnp.add, total, grad_fn(meta_params, chunk)), None

    shapes = jax.eval_shape(grad_fn, meta_params, jax.tree.map(lambda x: x[0], chunks))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    total, _ = jax.lax.scan(accumulate, zeros, chunks)
    return jax.tree.map(lambda x: x / num_chunks, total)

  def step(meta_params: MetaParams, opt_state: optax.OptState, episodes: Episode):
    fn = grad_fn if tasks_per_chunk is None else chunked_grad_fn
    (objective, aux), grads = fn(meta_params, episodes)
    updates, opt_state = optimizer.update(grads, opt_state, meta_params)
    meta_params = optax.apply_updates(meta_params, updates)
    return meta_params, opt_state, {**aux, "objective": objective}

  return step


def evaluate(learner: MetaLearner, num_steps: Sequence[int] | None = None
             ) -> Callable[[MetaParams, Episode], Aux]:
  """Query metrics of every episode in a batch, after adaptation.

  Args:
    learner: any :class:`MetaLearner`.
    num_steps: for gradient-based learners (whose ``loss`` takes a static
      ``num_steps`` override), the numbers of inner steps to evaluate at, e.g.
      ``(0, 1, 10)`` for before adaptation, after one step and after ten.
      ``None`` evaluates with the learner's own number of steps.

  Returns:
    ``evaluate(meta_params, episodes) -> metrics``: each metric (``"loss"``,
    and ``"accuracy"`` for classification) has shape ``[B]``, or
    ``[len(num_steps), B]`` when ``num_steps`` is given.
  """
  if num_steps is not None:
    num_steps = tuple(num_steps)
    if not num_steps or any(not isinstance(k, int) or k < 0 for k in num_steps):
      raise ValueError(f"num_steps must be a non-empty sequence of ints >= 0, got {num_steps}.")

  def per_episode(meta_params: MetaParams, episode: Episode) -> Aux:
    if num_steps is None:
      return learner.loss(meta_params, episode)[1]
    per_step = [learner.loss(meta_params, episode, num_steps=k)[1] for k in num_steps]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)

  batched = jax.vmap(per_episode, in_axes=(None, 0), out_axes=-1)

  def run(meta_params: MetaParams, episodes: Episode) -> Aux:
    check_episode(episodes, batch_dims=1)
    return batched(meta_params, episodes)

  return run


def support_loss(apply_fn: Callable[[Params, jax.Array], jax.Array], loss_fn: LossFn,
                 params: Params, support: Batch) -> jax.Array:
  """Mean per-example loss of ``apply_fn(params, ·)`` on a batch (the inner objective)."""
  return jnp.mean(loss_fn(apply_fn(params, support.inputs), support.labels))
