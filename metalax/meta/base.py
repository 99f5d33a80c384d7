"""The meta-learner interface and the generic code written once against it.

A meta-learning method is a :class:`MetaLearner`: a NamedTuple of pure
functions, built by a constructor such as :func:`metalax.meta.maml`. The
functions here (:func:`episode_loss`, :func:`batch_loss`, :func:`train_step`,
:func:`evaluate`) work for every method.

Randomness (the PRNG-key contract). A stochastic model (dropout, noise) is an
``apply_fn(params, inputs, key=key)`` (see :data:`metalax.types.ApplyFn`).
Every learner function takes an optional keyword ``key``:
``adapt(meta_params, support, key=None)``, ``predict(task_params, inputs,
key=None)`` and ``loss(meta_params, episode, key=None)``. Without a key the
model is called without one and everything is deterministic, as for a model
with no randomness. With a key, the learner derives a distinct key for every
call of the model with ``jax.random.split``: :func:`query_loss` splits it into
``(adapt_key, predict_key)``, a gradient-based ``adapt`` gives inner step ``i``
the key ``jax.random.split(adapt_key, num_steps)[i]``, and a learner that
samples for itself (e.g. latent variables) splits its own keys from the key it
was given. The generic functions take the key last and optional:
``batch_loss(learner)(meta_params, episodes, key=None)``, ``train_step(...)(
meta_params, opt_state, episodes, key=None)`` and ``evaluate(learner)(
meta_params, episodes, key=None)`` split it into one key per task,
``jax.random.split(key, B)[b]`` for episode ``b`` (also when
``tasks_per_chunk`` processes them in chunks). The same key gives the same
result; a fresh key per training step (e.g. ``jax.random.fold_in(key, step)``)
gives fresh dropout masks.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalax import losses
from metalax.types import ApplyFn, Batch, Episode, LossFn, Params, apply_model, check_episode, is_classification

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
    adapt: ``adapt(meta_params, support: Batch, key=None) -> task_params``.
    predict: ``predict(task_params, inputs [n, ...], key=None) -> outputs [n, ...]``.
    loss: ``loss(meta_params, episode, key=None) -> (objective, aux)``: the
      scalar whose gradient with respect to ``meta_params`` is the method's
      meta-gradient for one episode, and the query metrics :data:`Aux` after
      adaptation. For most methods the objective is the query loss after
      adaptation; Reptile returns a surrogate whose gradient is its
      pseudo-gradient.

  ``key`` is an optional keyword PRNG key (``jax.random.key``) for stochastic
  models; ``None`` (the default) is deterministic. See the module docstring
  for how a learner splits it.

  Attributes (optional):
    validate: ``validate(episodes) -> None`` for a ``[B]`` batch of episodes:
      checks what shapes cannot show, e.g. that class labels lie in ``[0,
      num_ways)`` and every class has support examples, and raises
      ``ValueError``. :func:`episode_loss`, :func:`batch_loss`,
      :func:`train_step` and :func:`evaluate` call it when the episodes are
      concrete arrays (not traced: outside ``jit``); under ``jit`` the values
      are unknown and such mistakes go unseen, as each learner documents.
  """

  init: Callable[[Params], MetaParams]
  adapt: Callable[..., TaskParams]
  predict: Callable[[TaskParams, jax.Array], jax.Array]
  loss: Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]
  validate: Callable[[Episode], None] | None = None


def split_key(key: jax.Array | None, num: int = 2) -> tuple[jax.Array | None, ...]:
  """``num`` keys split from ``key``, or ``num`` Nones when ``key`` is None.

  Lets a learner thread an optional key without branching at every call.
  """
  if key is None:
    return (None,) * num
  return tuple(jax.random.split(key, num))


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
    ``loss(meta_params, episode, key=None, **adapt_kwargs) -> (query loss,
    aux)``, for :attr:`MetaLearner.loss`; keyword arguments (e.g.
    ``num_steps``) go to ``adapt``. A key is split into ``(adapt_key,
    predict_key)``, passed as ``key=`` to ``adapt`` and ``predict``; without
    one, neither gets a ``key`` argument.
  """

  def loss(meta_params: MetaParams, episode: Episode, key: jax.Array | None = None,
           **adapt_kwargs) -> tuple[jax.Array, Aux]:
    if key is None:
      task_params = adapt(meta_params, episode.support, **adapt_kwargs)
      outputs = predict(task_params, episode.query.inputs)
    else:
      adapt_key, predict_key = jax.random.split(key)
      task_params = adapt(meta_params, episode.support, key=adapt_key, **adapt_kwargs)
      outputs = predict(task_params, episode.query.inputs, key=predict_key)
    aux = query_metrics(outputs, episode.query.labels, loss_fn)
    return aux["loss"], aux

  return loss


def episode_loss(learner: MetaLearner) -> Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]:
  """Meta-objective of one episode, with the episode's shapes checked.

  Args:
    learner: any :class:`MetaLearner`.

  Returns:
    ``loss(meta_params, episode, key=None) -> (objective, aux)`` for an
    unbatched :class:`~metalax.types.Episode`; the optional PRNG key goes to
    ``learner.loss``.

  Raises:
    ValueError: (when called) if the episode's fields are inconsistent.
  """

  def loss(meta_params: MetaParams, episode: Episode, key: jax.Array | None = None) -> tuple[jax.Array, Aux]:
    check_episode(episode, batch_dims=0)
    _validate(learner, jax.tree.map(lambda x: x[None], episode))
    return _learner_loss(learner, meta_params, episode, key)

  return loss


def batch_loss(learner: MetaLearner) -> Callable[[MetaParams, Episode], tuple[jax.Array, Aux]]:
  """Meta-objective averaged over a ``[B]`` batch of episodes (vmapped over tasks).

  Args:
    learner: any :class:`MetaLearner`.

  Returns:
    ``loss(meta_params, episodes, key=None) -> (mean objective, aux)`` where
    every leaf of ``episodes`` has a leading task axis ``[B]`` and ``aux``
    holds the means over tasks. An optional PRNG key is split into ``[B]``
    per-task keys, ``jax.random.split(key, B)``.

  Raises:
    ValueError: (when called) if ``episodes`` has no task axis (an unbatched
      episode) or its fields are inconsistent.

  Example:
    >>> learner = metalax.meta.maml(apply_fn, loss_fn, inner_lr=0.4, num_steps=1)
    >>> loss, aux = metalax.meta.batch_loss(learner)(meta_params, episodes)
  """
  per_task = _per_task_loss(learner)

  def loss(meta_params: MetaParams, episodes: Episode, key: jax.Array | None = None) -> tuple[jax.Array, Aux]:
    _check_episodes(learner, episodes)
    objectives, aux = per_task(meta_params, episodes, _task_keys(key, episodes))
    return jnp.mean(objectives), jax.tree.map(jnp.mean, aux)

  return loss


def _check_episodes(learner: MetaLearner, episodes: Episode) -> None:
  """Shapes of a ``[B]`` batch of episodes, then the learner's value checks when they are concrete."""
  check_episode(episodes, batch_dims=1)
  _validate(learner, episodes)


def _validate(learner: MetaLearner, episodes: Episode) -> None:
  """``learner.validate(episodes)`` and a check of non-negative class labels, unless traced."""
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(episodes)):
    return
  for name, labels in (("support", episodes.support.labels), ("query", episodes.query.labels)):
    if is_classification(labels) and labels.size and np.min(np.asarray(labels)) < 0:
      raise ValueError(f"episode {name} labels must be class indices >= 0, got a minimum of "
                       f"{np.min(np.asarray(labels))}.")
  if getattr(learner, "validate", None) is not None:
    learner.validate(episodes)


def _learner_loss(learner: MetaLearner, meta_params: MetaParams, episode: Episode,
                  key: jax.Array | None, **kwargs) -> tuple[jax.Array, Aux]:
  """``learner.loss``, given ``key=`` only when there is a key (learners written without one keep working)."""
  if key is None:
    return learner.loss(meta_params, episode, **kwargs)
  return learner.loss(meta_params, episode, key=key, **kwargs)


def _per_task_loss(learner: MetaLearner):
  """``learner.loss`` vmapped over ``[B]`` episodes and ``[B]`` keys (or no key)."""
  return jax.vmap(lambda meta_params, episode, key: _learner_loss(learner, meta_params, episode, key),
                  in_axes=(None, 0, 0))


def _task_keys(key: jax.Array | None, episodes: Episode) -> jax.Array | None:
  """``jax.random.split(key, B)``: one key per episode of the batch (None without a key)."""
  if key is None:
    return None
  key = jnp.asarray(key)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape:
    raise ValueError(f"key must be one PRNG key from jax.random.key (shape ()), got "
                     f"{key.dtype} of shape {tuple(key.shape)}.")
  return jax.random.split(key, jax.tree.leaves(episodes)[0].shape[0])


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
    ``step(meta_params, opt_state, episodes, key=None) -> (meta_params,
    opt_state, metrics)``, a pure function to wrap in ``jax.jit``; ``metrics``
    holds the batch means of the query metrics after adaptation and
    ``"objective"``. The optional PRNG key is split as in :func:`batch_loss`
    (episode ``b`` gets ``jax.random.split(key, B)[b]`` with or without chunks).

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
  per_task = _per_task_loss(learner)

  def keyed_loss(meta_params, episodes, task_keys):
    objectives, aux = per_task(meta_params, episodes, task_keys)
    return jnp.mean(objectives), jax.tree.map(jnp.mean, aux)

  keyed_grad_fn = jax.value_and_grad(keyed_loss, has_aux=True)

  def grad_fn(meta_params, episodes, key):
    _check_episodes(learner, episodes)
    return keyed_grad_fn(meta_params, episodes, _task_keys(key, episodes))

  def chunked_grad_fn(meta_params, episodes, key):
    _check_episodes(learner, episodes)
    num_tasks = jax.tree.leaves(episodes)[0].shape[0]
    if num_tasks % tasks_per_chunk:
      raise ValueError(f"tasks_per_chunk={tasks_per_chunk} must divide the meta-batch size, got {num_tasks} "
                       "episodes.")
    num_chunks = num_tasks // tasks_per_chunk
    chunks = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((tasks_per_chunk, num_chunks) + x.shape[1:]), 0, 1),
        (episodes, _task_keys(key, episodes)))

    def accumulate(total, chunk):
      return jax.tree.map(jnp.add, total, keyed_grad_fn(meta_params, *chunk)), None

    shapes = jax.eval_shape(keyed_grad_fn, meta_params, *jax.tree.map(lambda x: x[0], chunks))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    total, _ = jax.lax.scan(accumulate, zeros, chunks)
    return jax.tree.map(lambda x: x / num_chunks, total)

  def step(meta_params: MetaParams, opt_state: optax.OptState, episodes: Episode,
           key: jax.Array | None = None):
    fn = grad_fn if tasks_per_chunk is None else chunked_grad_fn
    (objective, aux), grads = fn(meta_params, episodes, key)
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
    ``evaluate(meta_params, episodes, key=None) -> metrics``: each metric
    (``"loss"``, and ``"accuracy"`` for classification) has shape ``[B]``, or
    ``[len(num_steps), B]`` when ``num_steps`` is given. An optional PRNG key
    is split into per-task keys as in :func:`batch_loss` (the same task key
    for every entry of ``num_steps``); without one the model runs
    deterministically (e.g. no dropout).
  """
  if num_steps is not None:
    num_steps = tuple(num_steps)
    if not num_steps or any(not isinstance(k, int) or k < 0 for k in num_steps):
      raise ValueError(f"num_steps must be a non-empty sequence of ints >= 0, got {num_steps}.")

  def per_episode(meta_params: MetaParams, episode: Episode, key: jax.Array | None) -> Aux:
    if num_steps is None:
      return _learner_loss(learner, meta_params, episode, key)[1]
    per_step = [_learner_loss(learner, meta_params, episode, key, num_steps=k)[1] for k in num_steps]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)

  batched = jax.vmap(per_episode, in_axes=(None, 0, 0), out_axes=-1)

  def run(meta_params: MetaParams, episodes: Episode, key: jax.Array | None = None) -> Aux:
    _check_episodes(learner, episodes)
    return batched(meta_params, episodes, _task_keys(key, episodes))

  return run


def support_loss(apply_fn: ApplyFn, loss_fn: LossFn, params: Params, support: Batch,
                 key: jax.Array | None = None) -> jax.Array:
  """Mean per-example loss of ``apply_fn(params, ·)`` on a batch (the inner objective).

  ``key`` (optional) goes to ``apply_fn`` as ``key=`` (see :data:`metalax.types.ApplyFn`).
  """
  return jnp.mean(loss_fn(apply_model(apply_fn, params, support.inputs, key), support.labels))
