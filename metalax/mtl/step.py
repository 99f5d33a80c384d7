r"""One multi-task training step: task losses, a weighting and/or an aggregator, an optax update.

The counterpart of :func:`metalax.meta.train_step` for multi-task learning.
:func:`train_step` composes, as pure functions closed over by the caller:

* ``task_losses_fn(model_params, batch) -> task_losses [T]``, written once
  (e.g. :func:`metalax.mtl.multitask_loss`);
* a :class:`~metalax.mtl.LossWeighting` (equal, uncertainty, DWA, RLW,
  GradNorm, MGDA-UB, static), an optax gradient :data:`Aggregator` (PCGrad,
  MGDA, CAGrad, Nash-MTL, ...), or both: the weighting scales each task's
  loss (and trains its own parameters), the aggregator combines the weighted
  per-task gradients of the shared parameters, the task-specific parameters
  get their plain sum (``optax.transforms.partition`` over a mask);
* optional task scheduling: each step trains on ``K`` of the ``T`` tasks,
  drawn without replacement from given probabilities
  (:func:`metalax.mtl.task_probabilities`: uniform, proportional to dataset
  size, temperature-scaled);
* any optax optimizer, over ``{"model": model_params, "weighting":
  weighting_params}``.

It returns a :class:`TrainStep`, ``(init, step)``: ``state = init(model_params)``
and ``state, metrics = step(state, batch, key)``, pure functions to wrap in
``jax.jit`` (and ``jax.vmap`` over seeds: the state is a pytree of arrays).
The batch is passed to ``task_losses_fn`` as it is; split its example axis
over devices with :func:`metalax.parallel.shard_batch` inside ``jit``, and the
means over examples become all-reduces (nothing in the step depends on the
number of devices).

Shapes: ``model_params`` any pytree; per-task gradients are pytrees with
leaves ``[T, *param_shape]`` (``[K, *param_shape]`` under scheduling), from one
forward pass and ``T`` (``K``) backward passes batched by ``jax.vmap``;
``metrics["task_losses"]`` is ``[T]``, ``metrics["loss"]`` their sum,
``metrics["weights"]`` (with a weighting) the ``[T]`` weights it used.

Example::

  model = metalax.mtl.HardParameterSharing(num_outputs=(10, 10))
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  task_losses_fn = metalax.mtl.multitask_loss(apply_fn, [cross_entropy, cross_entropy])
  train = metalax.mtl.train_step(task_losses_fn, optax.adam(1e-3), num_tasks=2,
                                 aggregator=metalax.mtl.pcgrad(key),
                                 shared=metalax.mtl.shared_mask)
  state = train.init(model.init(key, x)["params"])
  step = jax.jit(train.step)
  state, metrics = step(state, Batch(x, (left, right)))

References:
  Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS
  2018 (the shared / task-specific split of the update; MGDA-UB).
  Liu, He, Chen & Gao, Multi-Task Deep Neural Networks for Natural Language
  Understanding (MT-DNN), ACL 2019 (a task drawn per step, by dataset size).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import task_gradient_norms
from metalax.mtl.scheduling import sample_tasks
from metalax.mtl.weighting import LossWeighting
from metalax.mtl.weighting import equal_weighting

Params = Any
Mask = Any
"""A pytree of bools with the structure of the model parameters (or a prefix of
it), or a function ``params -> such a pytree``, as ``optax.masked`` takes."""

EXTRA_ARGS = ("task_gradient_norms", "representation_gradients")
"""The extra arguments a :class:`~metalax.mtl.LossWeighting` may require of the step."""


class MethodState(NamedTuple):
  """State of a multi-task method.

  Attributes:
    weighting: the loss weighting's state (``()`` without a weighting).
    aggregator: the partitioned aggregator's state (``()`` without one).
  """

  weighting: Any
  aggregator: Any


class TrainState(NamedTuple):
  """Everything a multi-task training step carries; a pytree of arrays.

  Attributes:
    params: ``{"model": model_params, "weighting": weighting_params}``.
    opt_state: the optax optimizer's state of ``params``.
    method_state: a :class:`MethodState`.
  """

  params: Any
  opt_state: Any
  method_state: MethodState


class TrainStep(NamedTuple):
  """Pure functions of one multi-task training method. Holds no arrays.

  Attributes:
    init: ``init(model_params) -> TrainState``.
    step: ``step(state, batch, key=None) -> (state, metrics)``; ``key`` is
      needed only with task scheduling.
  """

  init: Callable[[Params], TrainState]
  step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def _sum_over_tasks() -> optax.GradientTransformationExtraArgs:
  """Per-task gradients ``[T, ...]`` -> their sum ``[...]`` (the task-specific parameters)."""

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda g: jnp.sum(g, axis=0), updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def _full_mask(mask: Mask, params: Params, name: str) -> Any:
  """``mask`` (a prefix pytree of bools or a function) as a pytree of bools with ``params``' structure."""
  mask = mask(params) if callable(mask) else mask
  try:
    return jax.tree.map(lambda m, subtree: jax.tree.map(lambda _: bool(m), subtree), mask, params)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{name} must be a pytree of bools with the structure of the model parameters (or a "
                     f"prefix of it), or a function returning one; got {mask!r} ({e}).") from None


def _select(mask: Any, params: Params) -> tuple[list[jax.Array], Callable[[list[jax.Array]], Params]]:
  """The leaves of ``params`` where ``mask`` is True, and a function putting new values for them back."""
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(mask)
  chosen = [i for i, flag in enumerate(flags) if flag]

  def put(values):
    new = list(leaves)
    for i, value in zip(chosen, values):
      new[i] = value
    return jax.tree.unflatten(treedef, new)

  return [leaves[i] for i in chosen], put


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}.")


def train_step(
    task_losses_fn: Callable[[Params, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    num_tasks: int,
    weighting: LossWeighting | None = None,
    aggregator: Aggregator | None = None,
    shared: Mask | None = None,
    gradient_norm_params: Mask | None = None,
    representation: tuple[Callable[[Params, Any], Any], Callable[[Params, Any, Any], jax.Array]] | None = None,
    task_probabilities: jax.Array | None = None,
    tasks_per_step: int | None = None,
    regularizer: Callable[[Params], jax.Array] | None = None,
) -> TrainStep:
  r"""A multi-task training step with any loss weighting, any aggregator, or both.

  The update of each step, with ``L = task_losses_fn(model_params, batch)``
  (``[T]``) and ``w`` the weighting's weights (all ones without a weighting):

  * weighting only: ``jax.grad`` of the weighting's ``total_loss`` with
    respect to ``{"model", "weighting"}`` in one backward pass (the model gets
    ``sum_i w_i grad L_i``);
  * with an aggregator: the per-task gradients ``g_i = grad L_i`` (one
    forward, ``T`` vectorised backward passes); the shared parameters
    (``shared``) get ``aggregator(w_1 g_1, ..., w_T g_T)``, the others
    ``sum_i w_i g_i``, through ``optax.transforms.partition``; the weighting's
    parameters get the gradient of its ``total_loss`` (task losses held
    constant);
  * plus the gradient of ``regularizer(model_params)`` (e.g. the penalty of
    soft parameter sharing), outside any weighting and aggregation;
  * then ``optimizer.update`` on ``{"model", "weighting"}``,
    ``optax.apply_updates``, and the weighting's ``project``;
  * a weighting with an ``update(state, task_losses) -> state`` function
    (FAMO, which learns from the change of the losses across a step) then
    gets the task losses of the updated model on the same batch (one more
    forward pass).

  When ``shared`` selects no parameter (soft parameter sharing: nothing is
  shared), the aggregator has nothing to combine and every parameter gets the
  sum of its (weighted) task gradients.

  A weighting that ``requires`` extra arguments gets them:
  ``task_gradient_norms`` (``[T]``, GradNorm) are the norms of the per-task
  gradients with respect to the parameters ``gradient_norm_params`` selects
  (default ``shared``, or all parameters when ``shared`` is None);
  ``representation_gradients`` (``[T, *z_shape]``, MGDA-UB) are the per-task
  gradients with respect to ``z = encode_fn(model_params, batch)`` of
  ``decode_losses_fn(model_params, z, batch)``.

  Task scheduling (``task_probabilities`` given): each step draws
  ``tasks_per_step = K`` distinct tasks from ``task_probabilities`` (without
  replacement, :func:`metalax.mtl.sample_tasks`) and trains on those tasks'
  losses only: the other tasks' losses are held constant
  (``jax.lax.stop_gradient``), so they move no parameter; an aggregator sees
  the ``K`` drawn tasks' gradients (``K`` backward passes; build a
  task-count-dependent aggregator such as ``nash_mtl`` for ``K`` tasks). The
  weighting and the metrics still see all ``T`` losses.

  Args:
    task_losses_fn: ``task_losses_fn(model_params, batch) -> [T]``.
    optimizer: any optax optimizer; it updates ``{"model": model_params,
      "weighting": weighting_params}``.
    num_tasks: ``T``.
    weighting: a :class:`~metalax.mtl.LossWeighting`; None for equal weights
      (with no aggregator: :func:`~metalax.mtl.equal_weighting`).
    aggregator: an optax aggregator (``init(params)``, ``update(task_grads,
      state, params, **extra_args)``, e.g. :func:`~metalax.mtl.pcgrad`); it
      is given ``task_losses=`` as an extra argument.
    shared: which model parameters the aggregator combines: a :data:`Mask`
      (True = shared), e.g. :func:`metalax.mtl.shared_mask` for the
      architectures of :mod:`metalax.mtl.architectures`; None for all of them.
    gradient_norm_params: the parameters whose per-task gradient norms a
      weighting that requires ``task_gradient_norms`` gets (GradNorm's ``W``:
      the paper takes the last shared layer), a :data:`Mask`; None for
      ``shared`` (all parameters when ``shared`` is None or selects none).
    representation: ``(encode_fn, decode_losses_fn)`` with ``encode_fn(
      model_params, batch) -> z`` and ``decode_losses_fn(model_params, z,
      batch) -> [T]`` (equal to ``task_losses_fn``), for a weighting that
      requires ``representation_gradients`` (MGDA-UB).
    task_probabilities: ``[T]`` task probabilities for scheduling; None to
      train on every task at every step.
    tasks_per_step: ``K``, the tasks drawn per step (``1 <= K <= T``); needed
      with ``task_probabilities``.
    regularizer: ``regularizer(model_params) -> []`` added to the training
      objective; None for none.

  Returns:
    A :class:`TrainStep` ``(init, step)``. ``init(model_params) ->
    TrainState``; ``step(state, batch, key=None) -> (state, metrics)`` with
    ``metrics = {"loss": sum_i L_i, "task_losses": [T], "objective": the
    weighting's total loss (with a weighting), "weights": [T] (with a
    weighting), "scheduled": [T] 0/1 (with scheduling)}``.

  Raises:
    ValueError: on a bad ``num_tasks``, ``tasks_per_step`` or
      ``task_probabilities``, or a weighting whose required extra argument
      the step cannot compute (no ``representation`` for MGDA-UB); at trace
      time, a ``task_losses_fn`` that does not return ``[T]``, or a missing
      ``key`` under scheduling.

  Example::

    train = metalax.mtl.train_step(task_losses_fn, optax.adam(1e-3), num_tasks=2,
                                   weighting=metalax.mtl.gradnorm(alpha=1.5),
                                   shared=metalax.mtl.shared_mask)
    state = jax.vmap(train.init)(seed_params)            # one state per seed
    step = jax.jit(jax.vmap(train.step))
    state, metrics = step(state, batches)
  """
  _check_positive_int("num_tasks", num_tasks)
  if weighting is None and aggregator is None:
    weighting = equal_weighting()
  requires = tuple(getattr(weighting, "requires", ())) if weighting is not None else ()
  project = getattr(weighting, "project", None)
  after_step = getattr(weighting, "update", None)
  unknown = [name for name in requires if name not in EXTRA_ARGS]
  if unknown:
    raise ValueError(f"the weighting requires {unknown}, which train_step cannot compute (it provides "
                     f"{', '.join(EXTRA_ARGS)}).")
  if "representation_gradients" in requires and representation is None:
    raise ValueError("this weighting (MGDA-UB) requires representation_gradients: pass train_step(..., "
                     "representation=(encode_fn, decode_losses_fn)) for a model split at a shared representation.")
  scheduled = task_probabilities is not None
  if scheduled:
    task_probabilities = jnp.asarray(task_probabilities, jnp.float32)
    if task_probabilities.shape != (num_tasks,):
      raise ValueError(f"task_probabilities must have shape [{num_tasks}] (one per task), got "
                       f"{tuple(task_probabilities.shape)}.")
    _check_positive_int("tasks_per_step", tasks_per_step)
    if tasks_per_step > num_tasks:
      raise ValueError(f"tasks_per_step={tasks_per_step} distinct tasks cannot be drawn from {num_tasks} tasks.")
  elif tasks_per_step is not None:
    raise ValueError("tasks_per_step needs task_probabilities (scheduling); pass both or neither.")
  norm_mask = gradient_norm_params if gradient_norm_params is not None else shared

  partitioned = None
  if aggregator is not None:
    labels = (lambda tree: "shared") if shared is None else (
        lambda tree: jax.tree.map(lambda s: "shared" if s else "task", _full_mask(shared, tree, "shared")))
    partitioned = optax.transforms.partition(
        {"shared": optax.GradientTransformationExtraArgs(aggregator.init, aggregator.update),
         "task": _sum_over_tasks()}, labels)

  def aggregate(task_grads, aggregator_state, model_params, row_losses):
    if shared is not None and not any(jax.tree.leaves(_full_mask(shared, model_params, "shared"))):
      return _sum_over_tasks().update(task_grads, ())[0], aggregator_state  # nothing shared to aggregate
    return partitioned.update(task_grads, aggregator_state, model_params, task_losses=row_losses)

  def init(model_params: Params) -> TrainState:
    if weighting is not None:
      weighting_params, weighting_state = weighting.init(num_tasks)
    else:
      weighting_params, weighting_state = {}, ()
    aggregator_state = partitioned.init(model_params) if partitioned is not None else ()
    params = {"model": model_params, "weighting": weighting_params}
    return TrainState(params, optimizer.init(params), MethodState(weighting_state, aggregator_state))

  def check_losses(task_losses):
    if not hasattr(task_losses, "shape") or task_losses.shape != (num_tasks,):
      raise ValueError(f"task_losses_fn must return [T] = [{num_tasks}] task losses, got "
                       f"{getattr(task_losses, 'shape', type(task_losses).__name__)}.")
    return task_losses

  def extra_args(model_params, batch):
    extra = {}
    if "task_gradient_norms" in requires:
      mask = (jax.tree.map(lambda _: True, model_params) if norm_mask is None
              else _full_mask(norm_mask, model_params, "gradient_norm_params"))
      if gradient_norm_params is None and not any(jax.tree.leaves(mask)):
        mask = jax.tree.map(lambda _: True, model_params)  # nothing shared: every parameter
      chosen, put = _select(mask, model_params)
      if not chosen:
        raise ValueError("gradient_norm_params selects no parameter: GradNorm needs the per-task gradient norms "
                         "of at least one parameter.")
      losses, vjp_fn = jax.vjp(lambda leaves: task_losses_fn(put(leaves), batch), chosen)
      (grads,) = jax.vmap(vjp_fn)(jnp.eye(num_tasks, dtype=check_losses(losses).dtype))
      extra["task_gradient_norms"] = task_gradient_norms(grads)
    if "representation_gradients" in requires:
      encode_fn, decode_losses_fn = representation
      z = encode_fn(model_params, batch)
      losses, vjp_fn = jax.vjp(lambda z: decode_losses_fn(model_params, z, batch), z)
      (extra["representation_gradients"],) = jax.vmap(vjp_fn)(jnp.eye(num_tasks, dtype=check_losses(losses).dtype))
    return extra

  def schedule(key):
    if not scheduled:
      return None, None
    if key is None:
      raise ValueError("task scheduling draws tasks at every step: call step(state, batch, key).")
    task_ids = sample_tasks(key, task_probabilities, tasks_per_step, replace=False)
    return task_ids, jnp.zeros((num_tasks,), jnp.float32).at[task_ids].set(1.0)

  def step(state: TrainState, batch: Any, key: jax.Array | None = None):
    params = state.params
    model_params, weighting_params = params["model"], params["weighting"]
    weighting_state, aggregator_state = state.method_state
    task_ids, mask = schedule(key)
    extra = extra_args(model_params, batch)
    metrics = {}

    if partitioned is None:
      def objective(params):
        task_losses = check_losses(task_losses_fn(params["model"], batch))
        trained = task_losses if mask is None else jnp.where(mask > 0, task_losses,
                                                             jax.lax.stop_gradient(task_losses))
        total, (weights, new_state) = weighting.loss(params["weighting"], trained, weighting_state, **extra)
        return total, (task_losses, weights, new_state)

      (total, (task_losses, weights, weighting_state)), grads = jax.value_and_grad(
          objective, has_aux=True)(params)
    else:
      task_losses, vjp_fn = jax.vjp(lambda m: task_losses_fn(m, batch), model_params)
      check_losses(task_losses)
      rows = (jnp.eye(num_tasks, dtype=task_losses.dtype) if task_ids is None
              else jax.nn.one_hot(task_ids, num_tasks, dtype=task_losses.dtype))
      (task_grads,) = jax.vmap(vjp_fn)(rows)  # leaves [T or K, *param_shape]
      row_losses = task_losses if task_ids is None else task_losses[task_ids]
      if weighting is not None:
        constant = jax.lax.stop_gradient(task_losses)
        (total, (weights, weighting_state)), weighting_grads = jax.value_and_grad(
            lambda p: weighting.loss(p, constant, weighting_state, **extra), has_aux=True)(weighting_params)
        row_weights = jax.lax.stop_gradient(weights if task_ids is None else weights[task_ids])
        task_grads = jax.tree.map(lambda g: row_weights.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype) * g,
                                  task_grads)
      else:
        weights, weighting_grads = None, {}
      model_grads, aggregator_state = aggregate(task_grads, aggregator_state, model_params, row_losses)
      grads = {"model": model_grads, "weighting": weighting_grads}
    if regularizer is not None:
      penalty, penalty_grads = jax.value_and_grad(regularizer)(model_params)
      grads = {**grads, "model": jax.tree.map(jnp.add, grads["model"], penalty_grads)}
      metrics["regularizer"] = penalty

    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    if project is not None:
      params = {**params, "weighting": project(params["weighting"])}
    if after_step is not None:
      weighting_state = after_step(weighting_state, task_losses_fn(params["model"], batch))
    metrics["loss"] = jnp.sum(task_losses)
    metrics["task_losses"] = task_losses
    if weighting is not None:
      metrics["objective"] = total
      metrics["weights"] = weights
    if mask is not None:
      metrics["scheduled"] = mask
    return TrainState(params, opt_state, MethodState(weighting_state, aggregator_state)), metrics

  return TrainStep(init, step)
