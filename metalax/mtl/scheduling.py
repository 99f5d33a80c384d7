r"""Task scheduling for multi-task training: which tasks, then which examples.

A multi-task mini-batch is drawn in two stages: ``batch_size`` task indices,
then ``num_examples`` example indices inside each drawn task's dataset. Task
``i`` has ``sizes[i]`` training examples; datasets of different sizes are
mixed by the task distribution

.. math::
  p_i \propto \min(n_i, K)^{1/\tau},

(:func:`task_probabilities`) with the temperature ``tau`` choosing the regime:

* ``tau = 1``: proportional to dataset size ("examples-proportional mixing");
  every example is seen equally often, small tasks rarely;
* ``tau = inf``: uniform over tasks whatever their size;
* ``1 < tau < inf``: in between ("temperature-scaled mixing", Raffel et al.,
  2020, who keep the cap ``K`` before raising to ``1/tau``); the multilingual
  models write it ``p_i \propto q_i^alpha`` with ``alpha = 1/tau`` (XLM-R and
  mT5 use ``alpha = 0.3``, i.e. ``tau ~ 3.3``).

:func:`round_robin_tasks` cycles through the tasks in order instead.

Everything here is a pure, jittable function of ``(key, sizes, ...)`` with
static counts (``batch_size``, ``num_examples``); ``sizes`` may be traced. For
input pipelines that live on the host (Python generators, tf.data, grain),
:func:`host_task_schedule` yields the same task distribution from an explicit
``numpy.random.Generator``.

Example::

  sizes = jnp.array([50_000, 2_000, 300])
  probabilities = task_probabilities(sizes, temperature=2.0)
  task_key, example_key = jax.random.split(key)
  task_ids = sample_tasks(task_key, probabilities, batch_size=8)        # [8]
  indices = sample_examples(example_key, sizes, task_ids, num_examples=16)  # [8, 16]
  # With the datasets concatenated into one array, row offsets give global rows:
  offsets = jnp.cumsum(sizes) - sizes
  rows = offsets[task_ids][:, None] + indices

References:
  Raffel et al., Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer (T5), JMLR 2020, Sec. 3.5.2.
  Conneau & Lample, Cross-lingual Language Model Pretraining (XLM), NeurIPS
  2019; Conneau et al., Unsupervised Cross-lingual Representation Learning at
  Scale (XLM-R), ACL 2020; Xue et al., mT5, NAACL 2021.
"""

import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metalax.episodes import ordered_subsets


def _check_static_count(name: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive static Python int, got {value!r}.")


def _as_sizes(sizes: Sequence[int] | jax.Array) -> jax.Array:
  """``sizes`` as a ``[T]`` array; values are checked when they are concrete."""
  if not isinstance(sizes, jax.core.Tracer):
    concrete = np.asarray(sizes)
    if concrete.ndim != 1 or concrete.shape[0] == 0:
      raise ValueError(f"sizes must have shape [T] with T >= 1 (one dataset size per "
                       f"task), got shape {concrete.shape}.")
    if not np.all(concrete > 0):
      raise ValueError(f"every dataset size must be positive, got {concrete.tolist()}.")
  sizes = jnp.asarray(sizes)
  if sizes.ndim != 1 or sizes.shape[0] == 0:
    raise ValueError(f"sizes must have shape [T] with T >= 1, got {tuple(sizes.shape)}.")
  return sizes


def _check_temperature(temperature: float) -> None:
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0 (inf for uniform), got {temperature}.")


def task_probabilities(
    sizes: Sequence[int] | jax.Array,
    *,
    temperature: float = 1.0,
    size_cap: float | None = None,
) -> jax.Array:
  r"""Task sampling probabilities :math:`p_i \propto \min(n_i, K)^{1/\tau}`.

  Args:
    sizes: ``[T]`` positive dataset sizes ``n_i`` (may be traced).
    temperature: ``tau`` > 0: 1.0 proportional to size, ``float("inf")``
      uniform, in between temperature-scaled (T5 tries 2, 4 and 8).
    size_cap: the cap ``K`` applied to the sizes before the temperature (T5's
      "artificial dataset size limit"); None for no cap.

  Returns:
    ``[T]`` float32 probabilities summing to 1.

  Raises:
    ValueError: if ``sizes`` is not a non-empty vector of positive values, or
      ``temperature`` or ``size_cap`` is not positive.

  Example:
    >>> task_probabilities([100, 400], temperature=2.0).tolist()  # sqrt: 10 : 20
    [0.3333333432674408, 0.6666666865348816]
  """
  sizes = _as_sizes(sizes)
  _check_temperature(temperature)
  sizes = sizes.astype(jnp.float32)
  if size_cap is not None:
    if not size_cap > 0:
      raise ValueError(f"size_cap must be positive, got {size_cap}.")
    sizes = jnp.minimum(sizes, size_cap)
  if math.isinf(temperature):
    return jnp.full(sizes.shape, 1.0 / sizes.shape[0], jnp.float32)
  # In log space, so large sizes and small temperatures do not overflow.
  return jax.nn.softmax(jnp.log(sizes) / temperature)


def sample_tasks(
    key: jax.Array,
    probabilities: jax.Array,
    batch_size: int,
    *,
    replace: bool = True,
) -> jax.Array:
  """Draws ``batch_size`` task indices from ``probabilities``.

  Args:
    key: a PRNG key, from ``jax.random.key``.
    probabilities: ``[T]`` task probabilities (e.g. from
      :func:`task_probabilities`); they need not be normalised.
    batch_size: static number of tasks per mini-batch.
    replace: draw with replacement (independent draws) or without (distinct
      tasks, ``batch_size <= T``; then the draws are sequential, as
      ``jax.random.choice``, and the marginals are no longer ``probabilities``).

  Returns:
    ``[batch_size]`` int32 task indices in ``[0, T)``.

  Raises:
    ValueError: if ``probabilities`` is not a vector, ``batch_size`` is not a
      positive int, or ``batch_size > T`` without replacement.

  Example:
    >>> task_ids = sample_tasks(jax.random.key(0), jnp.array([0.5, 0.5]), 4)
    >>> task_ids.shape
    (4,)
  """
  _check_static_count("batch_size", batch_size)
  probabilities = jnp.asarray(probabilities)
  if probabilities.ndim != 1 or probabilities.shape[0] == 0:
    raise ValueError(f"probabilities must have shape [T] with T >= 1, got "
                     f"{tuple(probabilities.shape)}.")
  num_tasks = probabilities.shape[0]
  if not replace and batch_size > num_tasks:
    raise ValueError(f"batch_size={batch_size} distinct tasks were asked for without "
                     f"replacement, but there are only {num_tasks} tasks.")
  task_ids = jax.random.choice(key, num_tasks, (batch_size,), replace=replace,
                               p=probabilities)
  return task_ids.astype(jnp.int32)


def round_robin_tasks(step: int | jax.Array, num_tasks: int, batch_size: int) -> jax.Array:
  """Task indices of mini-batch ``step`` when cycling through the tasks in order.

  Mini-batch ``step`` holds tasks ``(step * batch_size + j) mod num_tasks`` for
  ``j = 0, ..., batch_size - 1``, so consecutive mini-batches continue the cycle
  ``0, 1, ..., T - 1, 0, 1, ...`` and every task is visited equally often.

  Args:
    step: the mini-batch index (an int, or a traced int32 scalar, e.g. the
      optimiser step counter).
    num_tasks: static number of tasks ``T``.
    batch_size: static number of tasks per mini-batch.

  Returns:
    ``[batch_size]`` int32 task indices.

  Example:
    >>> round_robin_tasks(1, num_tasks=3, batch_size=2).tolist()
    [2, 0]
  """
  _check_static_count("num_tasks", num_tasks)
  _check_static_count("batch_size", batch_size)
  start = jnp.asarray(step, jnp.int32) * batch_size
  return ((start + jnp.arange(batch_size, dtype=jnp.int32)) % num_tasks).astype(jnp.int32)


def sample_examples(
    key: jax.Array,
    sizes: Sequence[int] | jax.Array,
    task_ids: jax.Array,
    num_examples: int,
    *,
    replace: bool = True,
) -> jax.Array:
  """Draws ``num_examples`` example indices inside each drawn task's dataset.

  Indices are uniform over ``[0, sizes[task_ids[b]])`` for row ``b``:
  independent draws with replacement, or a uniformly random ordered subset
  without replacement (Floyd's algorithm, ``O(num_examples^2)`` per row
  whatever the dataset size).

  Args:
    key: a PRNG key.
    sizes: ``[T]`` positive dataset sizes (may be traced).
    task_ids: ``[B]`` int task indices in ``[0, T)``.
    num_examples: static number of examples per task.
    replace: with replacement (default) or without; without, every drawn task
      needs at least ``num_examples`` examples (checked when ``sizes`` is
      concrete).

  Returns:
    ``[B, num_examples]`` int32 indices local to each task's dataset.

  Raises:
    ValueError: on a ``task_ids`` that is not a vector, a non-positive
      ``num_examples``, or (without replacement) a task with fewer than
      ``num_examples`` examples.

  Example:
    >>> indices = sample_examples(jax.random.key(0), jnp.array([5, 100]),
    ...                           jnp.array([0, 1, 1]), num_examples=4)
    >>> indices.shape
    (3, 4)
  """
  sizes = _as_sizes(sizes)
  _check_static_count("num_examples", num_examples)
  task_ids = jnp.asarray(task_ids)
  if task_ids.ndim != 1:
    raise ValueError(f"task_ids must have shape [B], got {tuple(task_ids.shape)}.")
  row_sizes = sizes.astype(jnp.int32)[task_ids]
  if replace:
    return jax.random.randint(key, (task_ids.shape[0], num_examples), 0,
                              row_sizes[:, None], dtype=jnp.int32)
  if not isinstance(sizes, jax.core.Tracer):
    too_small = np.flatnonzero(np.asarray(sizes) < num_examples)
    if too_small.size:
      raise ValueError(
          f"num_examples={num_examples} distinct examples per task were asked for, but "
          f"tasks {too_small.tolist()} have only {np.asarray(sizes)[too_small].tolist()}.")
  return ordered_subsets(key, row_sizes, num_examples)


def sample_task_batch(
    key: jax.Array,
    sizes: Sequence[int] | jax.Array,
    batch_size: int,
    num_examples: int,
    *,
    temperature: float = 1.0,
    size_cap: float | None = None,
    replace_examples: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Samples a multi-task mini-batch: tasks by temperature, then examples.

  :func:`task_probabilities`, :func:`sample_tasks` (with replacement) and
  :func:`sample_examples` in one call.

  Args:
    key: a PRNG key.
    sizes: ``[T]`` positive dataset sizes.
    batch_size: static number of tasks per mini-batch.
    num_examples: static number of examples per task.
    temperature: see :func:`task_probabilities` (1.0 proportional, inf uniform).
    size_cap: see :func:`task_probabilities`.
    replace_examples: draw examples with replacement (default) or without.

  Returns:
    ``(task_ids [batch_size], example_indices [batch_size, num_examples])``,
    int32; the indices are local to each task's dataset.
  """
  task_key, example_key = jax.random.split(key)
  probabilities = task_probabilities(sizes, temperature=temperature, size_cap=size_cap)
  task_ids = sample_tasks(task_key, probabilities, batch_size)
  indices = sample_examples(example_key, sizes, task_ids, num_examples,
                            replace=replace_examples)
  return task_ids, indices


def host_task_schedule(
    rng: np.random.Generator,
    sizes: Sequence[int],
    batch_size: int,
    *,
    temperature: float = 1.0,
    size_cap: float | None = None,
    round_robin: bool = False,
) -> Iterator[np.ndarray]:
  """An endless host-side stream of task-index mini-batches (NumPy, no JAX).

  For input pipelines that run in Python: the same distribution as
  :func:`task_probabilities` / :func:`sample_tasks`, or the
  :func:`round_robin_tasks` cycle, drawn from an explicit generator that the
  caller seeds (``np.random.default_rng(seed)``), never from global state.

  Args:
    rng: a ``numpy.random.Generator``.
    sizes: ``[T]`` positive dataset sizes.
    batch_size: number of tasks per mini-batch.
    temperature: see :func:`task_probabilities`.
    size_cap: see :func:`task_probabilities`.
    round_robin: cycle through the tasks in order instead of sampling (``rng``,
      ``temperature`` and ``size_cap`` are then unused).

  Yields:
    ``[batch_size]`` int64 task indices, forever.

  Example:
    >>> schedule = host_task_schedule(np.random.default_rng(0), [10, 10], 3,
    ...                               round_robin=True)
    >>> next(schedule).tolist(), next(schedule).tolist()
    ([0, 1, 0], [1, 0, 1])
  """
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}.")
  _check_static_count("batch_size", batch_size)
  probabilities = np.asarray(
      task_probabilities(sizes, temperature=temperature, size_cap=size_cap), np.float64)
  probabilities = probabilities / probabilities.sum()
  num_tasks = probabilities.shape[0]
  step = 0
  while True:
    if round_robin:
      yield (step * batch_size + np.arange(batch_size)) % num_tasks
    else:
      yield rng.choice(num_tasks, size=batch_size, p=probabilities)
    step += 1
