r"""The multi-task objective :math:`\sum_i w_i L_i(\theta, D_i)` and its helpers.

:func:`multitask_loss` turns a model and one loss function per task (of any
kind: cross-entropy for a classification task next to squared error for a
regression task) into ``task_losses_fn(params, batches) -> task_losses [T]``,
the vector that the rest of :mod:`metalax.mtl` consumes:

* a :class:`~metalax.mtl.LossWeighting` scalarises it,
  ``weighting.loss(weighting_params, task_losses, state)``
  (:func:`multitask_objective` does this in one call);
* :func:`metalax.mtl.task_gradients` differentiates it into per-task gradients
  ``[T, *param_shape]`` for the gradient aggregators (PCGrad, MGDA, ...).

Two data layouts are supported, as in LibMTL's single- and multi-input modes:

* **shared inputs**: one :class:`~metalax.types.Batch` whose ``labels`` is a
  tuple of ``T`` label arrays, ``Batch(inputs [n, ...], labels=(y_1 [n, ...],
  ..., y_T [n, ...]))`` (every example is labelled for every task, e.g. NYUv2,
  census income);
* **one batch per task**: a sequence of ``T`` batches ``(Batch(x_1, y_1), ...,
  Batch(x_T, y_T))``, possibly of different sizes (e.g. Office-31, or
  datasets of different tasks mixed by :mod:`metalax.mtl.scheduling`).

and two kinds of models:

* **multi-output** (default): ``apply_fn(params, inputs [n, ...]) -> outputs``,
  a sequence of ``T`` arrays ``[n, ...]`` (the architectures of
  :mod:`metalax.mtl.architectures`) or an array ``[T, n, ...]``;
* **task-conditioned** (``conditioned=True``): ``apply_fn(params, inputs [n,
  ...], task_ids [n]) -> outputs [n, ...]``, one output per example for its own
  task (the modules of :mod:`metalax.mtl.conditioning`; turn task indices into
  descriptors inside ``apply_fn`` with :func:`one_hot_descriptors` or
  :func:`task_descriptors`).

Each task's loss is the mean of its per-example losses. The model runs once
per call: per-task batches with the same per-example input shape are
concatenated, and a conditioned model on shared inputs sees them tiled ``T``
times with the task index of each copy.

Regression targets of different tasks often live on very different scales,
which skews any fixed weighting; :func:`fit_standardizer` computes per-task
target statistics on the training split, :func:`standardize` puts targets on
unit scale for training and :func:`unstandardize` maps predictions back.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metalax.types import Batch
from metalax.types import LossFn
from metalax.types import Params

TaskLossesFn = Callable[[Params, Any], jax.Array]
"""``task_losses_fn(params, batches) -> task_losses [T]``."""


# ---------------------------------------------------------------------------
# Task descriptors.


def one_hot_descriptors(task_ids: jax.Array, num_tasks: int) -> jax.Array:
  """One-hot task descriptors.

  Args:
    task_ids: ``[n]`` int task indices in ``[0, num_tasks)`` (or a scalar).
    num_tasks: the number of tasks ``T``.

  Returns:
    ``[n, T]`` float32 (``[T]`` for a scalar index).

  Example:
    >>> one_hot_descriptors(jnp.array([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
  """
  if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
  task_ids = jnp.asarray(task_ids)
  if not jnp.issubdtype(task_ids.dtype, jnp.integer) or task_ids.ndim > 1:
    raise ValueError(f"task_ids must be an int scalar or vector [n], got dtype "
                     f"{task_ids.dtype} and shape {tuple(task_ids.shape)}.")
  return jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)


def task_descriptors(task_ids: jax.Array, table: jax.Array) -> jax.Array:
  """Looks up a given descriptor (metadata or embedding vector) per task.

  For fixed descriptors (task metadata, text embeddings of task names, ...).
  For learned ones use ``flax.linen.Embed(num_tasks, d)`` inside the model.

  Args:
    task_ids: ``[n]`` int task indices in ``[0, T)`` (or a scalar).
    table: ``[T, d]`` one descriptor per task.

  Returns:
    ``[n, d]`` (``[d]`` for a scalar index).

  Example:
    >>> table = jnp.array([[0.5, 1.0], [2.0, 0.0]])
    >>> task_descriptors(jnp.array([1, 1, 0]), table).tolist()
    [[2.0, 0.0], [2.0, 0.0], [0.5, 1.0]]
  """
  table = jnp.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"table must have shape [T, d] (one descriptor per task), got "
                     f"{tuple(table.shape)}.")
  task_ids = jnp.asarray(task_ids)
  if not jnp.issubdtype(task_ids.dtype, jnp.integer) or task_ids.ndim > 1:
    raise ValueError(f"task_ids must be an int scalar or vector [n], got dtype "
                     f"{task_ids.dtype} and shape {tuple(task_ids.shape)}.")
  return table[task_ids]


# ---------------------------------------------------------------------------
# The multi-task loss.


def _is_batch_sequence(batches: Any) -> bool:
  return isinstance(batches, (list, tuple)) and all(isinstance(b, Batch) for b in batches)


def _task_output(outputs: Any, task: int, num_tasks: int) -> jax.Array:
  if isinstance(outputs, (list, tuple)):
    if len(outputs) != num_tasks:
      raise ValueError(f"apply_fn returned {len(outputs)} outputs, expected one per task "
                       f"({num_tasks}).")
    return outputs[task]
  if not hasattr(outputs, "shape") or outputs.ndim < 2 or outputs.shape[0] != num_tasks:
    shape = tuple(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
    raise ValueError(
        "a multi-output apply_fn must return a sequence of T arrays [n, ...] or an array "
        f"[T, n, ...] with T = {num_tasks}; got {shape}. Pass conditioned=True for "
        "apply_fn(params, inputs, task_ids).")
  return outputs[task]


def _mean_loss(loss_fn: LossFn, outputs: jax.Array, labels: jax.Array, task: int) -> jax.Array:
  losses = loss_fn(outputs, labels)
  if not hasattr(losses, "shape") or losses.ndim < 1 or losses.shape[0] != labels.shape[0]:
    raise ValueError(
        f"the loss function of task {task} must return per-example losses [n] with n = "
        f"{labels.shape[0]}, got {getattr(losses, 'shape', type(losses).__name__)}.")
  return jnp.mean(losses)


def multitask_loss(
    apply_fn: Callable[..., Any],
    task_loss_fns: Sequence[LossFn],
    *,
    conditioned: bool = False,
) -> TaskLossesFn:
  r"""The vector of task losses :math:`(L_1(\theta, D_1), \dots, L_T(\theta, D_T))`.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> T outputs`` (a sequence of ``T``
      arrays ``[n, ...]``, or ``[T, n, ...]``), or, with ``conditioned=True``,
      ``apply_fn(params, inputs, task_ids [n]) -> outputs [n, ...]``.
    task_loss_fns: ``T`` per-example loss functions ``loss_fn(outputs [n, ...],
      labels [n, ...]) -> [n]``, one per task and of any kind (e.g.
      ``metalax.losses.cross_entropy`` and ``metalax.losses.squared_error``).
    conditioned: whether ``apply_fn`` is task-conditioned (see above).

  Returns:
    ``task_losses_fn(params, batches) -> task_losses [T]``, where ``batches`` is
    either one :class:`~metalax.types.Batch` with shared ``inputs [n, ...]`` and
    ``labels`` a sequence of ``T`` label arrays ``[n, ...]``, or a sequence of
    ``T`` batches, one per task (sizes may differ). ``task_losses[i]`` is the
    mean per-example loss of task ``i``. Pure and jittable; feed it to
    ``weighting.loss`` or :func:`metalax.mtl.task_gradients`.

  Raises:
    ValueError: (at call time) when the number of label arrays, batches or
      model outputs differs from ``len(task_loss_fns)``, or a loss function
      does not return per-example losses.

  Example::

    model = metalax.mtl.HardParameterSharing(num_outputs=(3, 1))
    task_losses_fn = multitask_loss(
        lambda p, x: model.apply({"params": p}, x),
        [metalax.losses.cross_entropy, metalax.losses.squared_error])
    batch = Batch(inputs=x, labels=(class_labels, targets))    # shared inputs
    task_losses = task_losses_fn(params, batch)                 # [2]
    task_losses, task_grads = metalax.mtl.task_gradients(task_losses_fn, params, batch)
  """
  task_loss_fns = tuple(task_loss_fns)
  num_tasks = len(task_loss_fns)
  if num_tasks == 0 or not all(callable(fn) for fn in task_loss_fns):
    raise ValueError("task_loss_fns must be a non-empty sequence of loss functions, one "
                     f"per task; got {task_loss_fns!r}.")

  def shared_inputs_losses(params, batch):
    labels = batch.labels
    if not isinstance(labels, (list, tuple)) or len(labels) != num_tasks:
      got = len(labels) if isinstance(labels, (list, tuple)) else type(labels).__name__
      raise ValueError(
          f"with shared inputs, batch.labels must be a sequence of {num_tasks} label arrays "
          f"(one per task), got {got}.")
    inputs = batch.inputs
    n = inputs.shape[0]
    if conditioned:
      tiled = jnp.concatenate([inputs] * num_tasks, axis=0)
      task_ids = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), n)
      outputs = apply_fn(params, tiled, task_ids)
      per_task = [outputs[t * n:(t + 1) * n] for t in range(num_tasks)]
    else:
      outputs = apply_fn(params, inputs)
      per_task = [_task_output(outputs, t, num_tasks) for t in range(num_tasks)]
    return jnp.stack([
        _mean_loss(task_loss_fns[t], per_task[t], labels[t], t) for t in range(num_tasks)])

  def per_task_losses(params, batches):
    if len(batches) != num_tasks:
      raise ValueError(f"got {len(batches)} batches for {num_tasks} tasks (one per task).")
    sizes = [b.inputs.shape[0] for b in batches]
    same_inputs = len({(b.inputs.shape[1:], b.inputs.dtype) for b in batches}) == 1
    if same_inputs:
      # One forward pass on the concatenated inputs, then each task reads its rows.
      inputs = jnp.concatenate([b.inputs for b in batches], axis=0)
      starts = np.concatenate([[0], np.cumsum(sizes)])
      if conditioned:
        task_ids = jnp.asarray(np.repeat(np.arange(num_tasks), sizes), jnp.int32)
        outputs = apply_fn(params, inputs, task_ids)
        per_task = [outputs[starts[t]:starts[t + 1]] for t in range(num_tasks)]
      else:
        outputs = apply_fn(params, inputs)
        per_task = [_task_output(outputs, t, num_tasks)[starts[t]:starts[t + 1]]
                    for t in range(num_tasks)]
    else:
      # Inputs of different shapes (different modalities): one pass per task.
      per_task = []
      for t, b in enumerate(batches):
        if conditioned:
          per_task.append(apply_fn(params, b.inputs, jnp.full((sizes[t],), t, jnp.int32)))
        else:
          per_task.append(_task_output(apply_fn(params, b.inputs), t, num_tasks))
    return jnp.stack([
        _mean_loss(task_loss_fns[t], per_task[t], batches[t].labels, t)
        for t in range(num_tasks)])

  def task_losses_fn(params, batches):
    if isinstance(batches, Batch):
      return shared_inputs_losses(params, batches)
    if _is_batch_sequence(batches):
      return per_task_losses(params, batches)
    raise ValueError(
        "batches must be a metalax.types.Batch with shared inputs and a sequence of label "
        "arrays, or a sequence of Batch (one per task); got "
        f"{type(batches).__name__}.")

  return task_losses_fn


def multitask_objective(
    task_losses_fn: TaskLossesFn,
    weighting: Any,
) -> Callable[[Any, Any, Any], tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]]:
  r"""The scalar objective :math:`\sum_i w_i L_i(\theta, D_i)` under a loss weighting.

  Args:
    task_losses_fn: ``task_losses_fn(model_params, batches) -> [T]``, e.g. from
      :func:`multitask_loss`.
    weighting: a :class:`~metalax.mtl.LossWeighting` (or anything with its
      ``loss(weighting_params, task_losses, state)``).

  Returns:
    ``objective(params, batches, weighting_state) -> (total_loss, (task_losses
    [T], weights [T], new_weighting_state))`` with ``params = {"model":
    model_params, "weighting": weighting_params}``, for ``jax.value_and_grad(...,
    has_aux=True)``: one gradient trains the model and a learnable weighting.

  Example::

    weighting = metalax.mtl.uncertainty_weighting(["classification", "regression"])
    weighting_params, weighting_state = weighting.init(2)
    objective = multitask_objective(task_losses_fn, weighting)
    params = {"model": model_params, "weighting": weighting_params}
    (loss, (task_losses, weights, weighting_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(params, batch, weighting_state)
  """

  def objective(params, batches, weighting_state):
    task_losses = task_losses_fn(params["model"], batches)
    total, (weights, new_state) = weighting.loss(params["weighting"], task_losses,
                                                 weighting_state)
    return total, (task_losses, weights, new_state)

  return objective


# ---------------------------------------------------------------------------
# Regression targets on a common scale.


class TargetStandardizer(NamedTuple):
  """Per-dimension statistics of one task's training targets.

  Attributes:
    mean: ``[*target_shape]`` mean over the training examples.
    std: ``[*target_shape]`` standard deviation (population, ``ddof=0``),
      floored at ``min_std``.
  """

  mean: jax.Array
  std: jax.Array


def fit_standardizer(train_targets: jax.Array, *, min_std: float = 1e-6) -> TargetStandardizer:
  """Target statistics from a task's *training* split (never validation or test).

  Fit one standardizer per regression task, e.g. ``[fit_standardizer(y) for y
  in train_targets_per_task]``; classification labels need none.

  Args:
    train_targets: ``[n, *target_shape]`` float regression targets.
    min_std: floor on the standard deviation, so a constant target does not
      divide by zero.

  Returns:
    A :class:`TargetStandardizer`.

  Raises:
    ValueError: if the targets are not floating point or have no example.

  Example:
    >>> s = fit_standardizer(jnp.array([[1.0], [3.0]]))
    >>> s.mean.tolist(), s.std.tolist()
    ([2.0], [1.0])
  """
  train_targets = jnp.asarray(train_targets)
  if not jnp.issubdtype(train_targets.dtype, jnp.floating):
    raise ValueError(f"train_targets must be float regression targets, got dtype "
                     f"{train_targets.dtype}.")
  if train_targets.ndim < 1 or train_targets.shape[0] == 0:
    raise ValueError(f"train_targets must have shape [n, ...] with n >= 1, got "
                     f"{tuple(train_targets.shape)}.")
  mean = jnp.mean(train_targets, axis=0)
  std = jnp.maximum(jnp.std(train_targets, axis=0), min_std)
  return TargetStandardizer(mean, std)


def standardize(standardizer: TargetStandardizer, targets: jax.Array) -> jax.Array:
  """``(targets - mean) / std``: targets ``[n, *target_shape]`` on unit scale."""
  return (targets - standardizer.mean) / standardizer.std


def unstandardize(standardizer: TargetStandardizer, values: jax.Array) -> jax.Array:
  """``values * std + mean``: predictions ``[n, *target_shape]`` back in target units.

  The inverse of :func:`standardize`. A squared error measured on the
  standardized scale equals the original one divided by ``std**2``.
  """
  return values * standardizer.std + standardizer.mean
