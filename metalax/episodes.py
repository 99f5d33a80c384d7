"""N-way K-shot episode samplers: pure, jittable functions of ``(key, images)``.

Every count is a static Python int, so episodes have static shapes; all
randomness comes from the ``key``. An episode's classes are distinct, the
examples drawn from a class are distinct, and support and query never share an
example. Which class gets which label is random (uniform over the
``num_ways!`` assignments); within the support (and the query) examples are
grouped by label: rows ``[i * num_shots, (i + 1) * num_shots)`` of the support
and ``[i * num_queries, (i + 1) * num_queries)`` of the query have label ``i``,
so ``support.inputs.reshape(num_ways, num_shots, ...)`` is indexed by label.
Shuffle the rows yourself if a method could exploit that order.

Classes and examples are drawn without replacement with Floyd's algorithm
(``k`` draws of ``jax.random.randint``) followed by a ``jax.random.permutation``
of the ``k`` drawn values, so sampling costs ``O(k^2)`` per class whatever the
number of classes or examples: about 2 ms for 32 five-way episodes from the
4,800 Omniglot training classes on CPU, against about 75 ms for
``jax.random.choice(..., replace=False)``, which permutes all classes.

Variable-ways, variable-shots episodes (Meta-Dataset style) keep static
shapes by drawing the shape on the host: :func:`sample_episode_shape` draws
``(num_ways, num_shots)`` from a key before the jitted call, and the jitted
sampler (and the learner, whose ``num_ways`` is static) runs with those
counts; each distinct shape compiles once (:func:`episode_shapes` lists
them). :func:`sample_variable_episodes` does both in one call.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metalax.data.images import ClassImages
from metalax.data.images import RaggedClassImages
from metalax.types import Batch
from metalax.types import Episode

Augment = Callable[[jax.Array, jax.Array], jax.Array]
"""``augment(key, image [H, W, C]) -> image [H', W', C']``, applied to each image.

:func:`metalax.augment.parse` turns a comma list of operation names into one
(``augment=augment.parse("random_flip,random_rotation")``); it converts uint8
pixels to float32 in ``[0, 1]`` first, so it applies to episodes as sampled.
"""

# A 4-axis array whose last axis is one of these is an image batch [N, H, W, C], not [classes, per_class, ...].
_CHANNEL_COUNTS = (1, 3)


def _check_counts(num_classes: int, per_class: int, num_ways: int, num_shots: int,
                  num_queries: int, per_class_text: str) -> None:
  for name, value in (("num_ways", num_ways), ("num_shots", num_shots),
                      ("num_queries", num_queries)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ValueError(f"{name} must be a static Python int, got {type(value).__name__}.")
  if num_ways <= 0 or num_shots <= 0 or num_queries <= 0:
    raise ValueError(
        "num_ways, num_shots and num_queries must be positive, got "
        f"num_ways={num_ways}, num_shots={num_shots}, num_queries={num_queries}.")
  if num_ways > num_classes:
    raise ValueError(
        f"num_ways={num_ways} needs at least {num_ways} classes, but the images have "
        f"{num_classes} classes.")
  if num_shots + num_queries > per_class:
    raise ValueError(
        f"num_shots + num_queries = {num_shots} + {num_queries} = {num_shots + num_queries} "
        f"distinct examples per class are needed, but {per_class_text} {per_class}.")


def _augment_batch(key: jax.Array, images: jax.Array, augment: Augment | None) -> jax.Array:
  if augment is None:
    return images
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment)(keys, images)


def _assemble(key: jax.Array, chosen: jax.Array, num_ways: int, num_shots: int,
              num_queries: int, augment: Augment | None) -> Episode:
  """``chosen [num_ways, num_shots + num_queries, H, W, C]`` -> Episode (label = row)."""
  image_shape = chosen.shape[2:]
  support_inputs = chosen[:, :num_shots].reshape((num_ways * num_shots,) + image_shape)
  query_inputs = chosen[:, num_shots:].reshape((num_ways * num_queries,) + image_shape)
  support_key, query_key = jax.random.split(key)
  support_inputs = _augment_batch(support_key, support_inputs, augment)
  query_inputs = _augment_batch(query_key, query_inputs, augment)
  labels = jnp.arange(num_ways, dtype=jnp.int32)
  return Episode(
      support=Batch(inputs=support_inputs, labels=jnp.repeat(labels, num_shots)),
      query=Batch(inputs=query_inputs, labels=jnp.repeat(labels, num_queries)))


def ordered_subsets(key: jax.Array, sizes: jax.Array, size: int) -> jax.Array:
  """Uniformly random ordered ``size``-subsets of ``[0, sizes[r])``, one per row.

  Floyd's algorithm draws a uniform ``size``-subset with ``size`` calls to
  ``jax.random.randint`` (for ``j`` from ``n - size`` to ``n - 1``: draw ``t`` in
  ``[0, j]``, keep ``t`` unless already kept, else keep ``j``); a
  ``jax.random.permutation`` of those ``size`` values then makes the order
  uniform. The cost is ``O(size^2)`` per row whatever ``n``: a full permutation
  of 4,800 classes costs about 500 times more on CPU.

  Args:
    key: a PRNG key.
    sizes: ``[rows]`` int32, each at least ``size`` (checked by the caller).
    size: the static number of values per row.

  Returns:
    ``[rows, size]`` int32, distinct within each row.

  References:
    Bentley and Floyd, Programming pearls: a sample of brilliance, CACM, 1987.
  """
  draw_key, order_key = jax.random.split(key)
  subsets = jnp.full((sizes.shape[0], size), -1, jnp.int32)
  subsets, _, _ = jax.lax.fori_loop(0, size, _floyd_step, (subsets, sizes, draw_key))
  return jax.random.permutation(order_key, subsets, axis=1, independent=True)


def _floyd_step(i, state):
  """Step ``i`` of Floyd's algorithm (module level, so eager calls reuse its trace)."""
  subsets, sizes, key = state
  j = sizes - subsets.shape[1] + i
  t = jax.random.randint(jax.random.fold_in(key, i), sizes.shape, 0, j + 1, dtype=jnp.int32)
  taken = jnp.any(subsets == t[:, None], axis=1)
  return subsets.at[:, i].set(jnp.where(taken, j, t)), sizes, key


def _sample_dense(key, images, num_ways, num_shots, num_queries, augment):
  num_classes, num_per_class = images.shape[:2]
  class_key, example_key, augment_key = jax.random.split(key, 3)
  # A uniformly random ordered subset: classes[i] gets label i.
  classes = ordered_subsets(class_key, jnp.full((1,), num_classes, jnp.int32), num_ways)[0]
  examples = ordered_subsets(example_key, jnp.full((num_ways,), num_per_class, jnp.int32),
                              num_shots + num_queries)
  chosen = jnp.asarray(images)[classes[:, None], examples]
  return _assemble(augment_key, chosen, num_ways, num_shots, num_queries, augment)


def _sample_ragged(key, data, num_ways, num_shots, num_queries, augment):
  offsets = jnp.asarray(np.asarray(data.class_offsets[:-1]), dtype=jnp.int32)
  counts = jnp.asarray(data.counts, dtype=jnp.int32)
  class_key, example_key, augment_key = jax.random.split(key, 3)
  classes = ordered_subsets(class_key, jnp.full((1,), data.num_classes, jnp.int32), num_ways)[0]
  examples = ordered_subsets(example_key, counts[classes], num_shots + num_queries)
  rows = offsets[classes][:, None] + examples
  chosen = jnp.asarray(data.images)[rows]
  return _assemble(augment_key, chosen, num_ways, num_shots, num_queries, augment)


def _validate(images, num_ways, num_shots, num_queries):
  """Checks the counts against the data; returns the array or RaggedClassImages to sample."""
  if isinstance(images, ClassImages):
    images = images.images
  if isinstance(images, RaggedClassImages):
    counts = images.counts
    smallest = int(counts.min())
    _check_counts(images.num_classes, smallest, num_ways, num_shots, num_queries,
                  f"the smallest class ({images.class_names[int(counts.argmin())]!r}) has")
    if images.images.ndim < 2:
      raise ValueError(
          f"RaggedClassImages.images must be [N, H, W, C], got {images.images.shape}.")
    return images
  if not hasattr(images, "shape") or images.ndim < 3:
    raise ValueError(
        "images must have shape [num_classes, num_per_class, H, W, C] (at least 3 axes), "
        f"got {getattr(images, 'shape', type(images).__name__)}.")
  if images.ndim == 4 and images.shape[-1] in _CHANNEL_COUNTS:
    raise ValueError(
        f"images of shape {tuple(images.shape)} look like a flat batch [N, H, W, C] of images, not images "
        "grouped by class: sample_episode(s) reads an array as [num_classes, num_per_class, H, W, C] (or "
        "[num_classes, num_per_class, *feature_shape]), so this one would be taken as "
        f"{images.shape[0]} classes of {images.shape[1]} examples shaped {tuple(images.shape[2:])}. Group the "
        "images by class first: metalax.data.from_labelled(images, labels) (any number per class), or "
        "metalax.data.class_images(images.reshape(num_classes, num_per_class, H, W, C)) when they are already "
        "sorted by class with equal counts.")
  _check_counts(images.shape[0], images.shape[1], num_ways, num_shots, num_queries,
                "images have num_per_class =")
  return images


def sample_episode(key: jax.Array, images: jax.Array | ClassImages | RaggedClassImages,
                   num_ways: int, num_shots: int, num_queries: int,
                   augment: Augment | None = None) -> Episode:
  """Samples one N-way K-shot episode.

  Draws ``num_ways`` distinct classes, gives them labels ``0 .. num_ways - 1``
  in a random order, and from each class ``num_shots + num_queries`` distinct
  examples: the first ``num_shots`` go to the support, the rest to the query.
  See the module docstring for the row order. Pure and jittable with the counts
  and ``augment`` static, e.g.
  ``jax.jit(sample_episode, static_argnums=(2, 3, 4, 5))``.

  Args:
    key: a PRNG key.
    images: ``[num_classes, num_per_class, H, W, C]`` (any trailing shape), a
      :class:`~metalax.data.images.ClassImages`, or a
      :class:`~metalax.data.images.RaggedClassImages` (classes with different
      counts; all its images are used, with no padding or truncation).
    num_ways: classes per episode (N).
    num_shots: support examples per class (K).
    num_queries: query examples per class.
    augment: optional ``augment(key, image) -> image``, applied with its own
      key to every support and query image (vmapped).

  Returns:
    An :class:`~metalax.types.Episode`: ``support.inputs [num_ways * num_shots,
    H, W, C]``, ``support.labels [num_ways * num_shots]`` int32, and the query
    alike with ``num_queries``. Inputs keep the images' dtype (see
    :func:`metalax.data.images.to_float32`).

  Raises:
    ValueError: if a count is not a positive int, ``num_ways`` exceeds the
      number of classes, or ``num_shots + num_queries`` exceeds the examples of
      a class (the smallest class, for ragged data). Raised when called (or
      traced), never inside compiled code.

  Example:
    >>> images = np.zeros((20, 20, 28, 28, 1), np.float32)
    >>> episode = sample_episode(jax.random.key(0), images, 5, 1, 15)
    >>> episode.support.inputs.shape, episode.query.labels.shape
    ((5, 28, 28, 1), (75,))

  References:
    Vinyals et al., Matching networks for one shot learning, 2016.
  """
  data = _validate(images, num_ways, num_shots, num_queries)
  if isinstance(data, RaggedClassImages):
    return _sample_ragged(key, data, num_ways, num_shots, num_queries, augment)
  return _sample_dense(key, data, num_ways, num_shots, num_queries, augment)


def sample_episodes(key: jax.Array, images: jax.Array | ClassImages | RaggedClassImages,
                    num_tasks: int, num_ways: int, num_shots: int, num_queries: int,
                    augment: Augment | None = None) -> Episode:
  """Samples ``num_tasks`` independent episodes (a ``vmap`` of :func:`sample_episode`).

  Episode ``b`` equals ``sample_episode(jax.random.split(key, num_tasks)[b],
  images, ...)``.

  Args:
    key: a PRNG key.
    images: as in :func:`sample_episode`.
    num_tasks: number of episodes (B), a positive static int.
    num_ways: classes per episode.
    num_shots: support examples per class.
    num_queries: query examples per class.
    augment: as in :func:`sample_episode`.

  Returns:
    An :class:`~metalax.types.Episode` whose every leaf has a leading ``[B]``
    axis: ``support.inputs [B, num_ways * num_shots, H, W, C]``, ...

  Raises:
    ValueError: as :func:`sample_episode`, or if ``num_tasks`` is not positive.

  Example:
    >>> sample = jax.jit(sample_episodes, static_argnums=(2, 3, 4, 5))
    >>> episodes = sample(jax.random.key(0), images, 32, 5, 1, 15)
    >>> episodes.support.inputs.shape
    (32, 5, 28, 28, 1)
  """
  if not isinstance(num_tasks, (int, np.integer)) or isinstance(num_tasks, bool) or num_tasks <= 0:
    raise ValueError(f"num_tasks must be a positive static int, got {num_tasks!r}.")
  data = _validate(images, num_ways, num_shots, num_queries)
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(
      lambda task_key: sample_episode(task_key, data, num_ways, num_shots, num_queries,
                                      augment))(keys)


class EpisodeShape(NamedTuple):
  """The static counts of an episode: ``sample_episodes(key, images, num_tasks, *shape)``."""

  num_ways: int
  num_shots: int
  num_queries: int


def _check_ranges(min_ways, max_ways, min_shots, max_shots, num_queries) -> None:
  values = {"min_ways": min_ways, "max_ways": max_ways, "min_shots": min_shots, "max_shots": max_shots,
            "num_queries": num_queries}
  for name, value in values.items():
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ValueError(f"{name} must be a static Python int, got {type(value).__name__}.")
  if min_ways < 1 or min_shots < 1 or num_queries < 1:
    raise ValueError(
        f"min_ways, min_shots and num_queries must be positive, got min_ways={min_ways}, "
        f"min_shots={min_shots}, num_queries={num_queries}.")
  if min_ways > max_ways or min_shots > max_shots:
    raise ValueError(
        f"expected min_ways <= max_ways and min_shots <= max_shots, got ways [{min_ways}, {max_ways}] and "
        f"shots [{min_shots}, {max_shots}].")


def episode_shapes(min_ways: int, max_ways: int, min_shots: int, max_shots: int,
                   num_queries: int) -> tuple[EpisodeShape, ...]:
  """Every shape :func:`sample_episode_shape` can draw, ways-major (each compiles once).

  Args:
    min_ways, max_ways: the range of classes per episode, inclusive.
    min_shots, max_shots: the range of support examples per class, inclusive.
    num_queries: query examples per class (fixed).

  Returns:
    ``(max_ways - min_ways + 1) * (max_shots - min_shots + 1)`` shapes:
    ``(min_ways, min_shots), (min_ways, min_shots + 1), ...``.

  Raises:
    ValueError: if a count is not a positive static int or a range is empty.
  """
  _check_ranges(min_ways, max_ways, min_shots, max_shots, num_queries)
  return tuple(EpisodeShape(int(ways), int(shots), int(num_queries))
               for ways in range(min_ways, max_ways + 1) for shots in range(min_shots, max_shots + 1))


def sample_episode_shape(key: jax.Array, min_ways: int, max_ways: int, min_shots: int, max_shots: int,
                         num_queries: int) -> EpisodeShape:
  """Draws an episode shape on the host: ways and shots independent and uniform in their ranges.

  Call it outside ``jit`` (the counts become Python ints, the static
  arguments of the jitted sampler and learner); it costs one small device
  computation and a transfer. A batch of ``num_tasks`` episodes sampled with
  one shape shares it (one shape per meta-batch).

  Args:
    key: a PRNG key (concrete, not traced).
    min_ways, max_ways: classes per episode, inclusive range.
    min_shots, max_shots: support examples per class, inclusive range.
    num_queries: query examples per class (fixed).

  Returns:
    An :class:`EpisodeShape` of Python ints.

  Raises:
    ValueError: as :func:`episode_shapes`, or if ``key`` is a tracer (called
      inside ``jit``).

  Example:
    >>> shape = sample_episode_shape(key, 5, 20, 1, 5, 10)
    >>> sample = jax.jit(sample_episodes, static_argnums=(2, 3, 4, 5))
    >>> episodes = sample(key, images, 16, *shape)   # compiles once per shape
  """
  _check_ranges(min_ways, max_ways, min_shots, max_shots, num_queries)
  if isinstance(key, jax.core.Tracer):
    raise ValueError(
        "sample_episode_shape draws Python ints for static shapes: call it outside jax.jit "
        "(got a traced key).")
  ways, shots = _draw_shape(key, min_ways, max_ways, min_shots, max_shots)
  return EpisodeShape(int(ways), int(shots), int(num_queries))


def _draw_shape(key: jax.Array, min_ways: int, max_ways: int, min_shots: int,
                max_shots: int) -> tuple[jax.Array, jax.Array]:
  """``(ways, shots)`` int32 scalars, independent and uniform in their inclusive ranges."""
  ways_key, shots_key = jax.random.split(key)
  return (jax.random.randint(ways_key, (), min_ways, max_ways + 1),
          jax.random.randint(shots_key, (), min_shots, max_shots + 1))


def sample_variable_episodes(key: jax.Array, images: jax.Array | ClassImages | RaggedClassImages,
                             num_tasks: int, min_ways: int, max_ways: int, min_shots: int, max_shots: int,
                             num_queries: int, augment: Augment | None = None) -> Episode:
  """Samples ``num_tasks`` episodes of one random shape: variable ways and shots, static shapes.

  Draws the shape with :func:`sample_episode_shape` from
  ``jax.random.split(key)[0]``, then returns ``sample_episodes(
  jax.random.split(key)[1], images, num_tasks, *shape, augment)``, jitted
  (one compilation per shape; an ``augment`` that is not hashable runs
  without ``jit``). The
  shape is checked against the data for the largest counts first, so a range
  that does not fit fails on the first call, whatever shape is drawn.

  Design: metalax samplers and learners have static shapes (a metric learner
  takes ``num_ways`` as a static argument; a gradient learner's head has a
  fixed width), so the shape is drawn on the host per call and every distinct
  shape compiles once, ``len(episode_shapes(...))`` at most. Padding every
  episode to ``max_ways x max_shots`` with a mask would compile once, but
  padded rows would enter batch-statistics normalisation and every learner's
  prototypes and losses unless each learner masked them. To bound compilation,
  keep the ranges small (or draw shapes from a short list yourself and call
  :func:`sample_episodes`). Unlike Meta-Dataset's sampler (Triantafillou et
  al. 2020: ways uniform in ``[5, 50]``, class-imbalanced support sets from a
  size budget, up to 10 queries per class), every class of an episode has the
  same number of shots, and all ``num_tasks`` episodes share the shape.

  Wiring in a training loop (one shape per jitted call)::

    shape = sample_episode_shape(jax.random.fold_in(shape_key, call), 5, 20, 1, 5, 10)
    step = steps[shape] if shape in steps else steps.setdefault(shape, make_step(shape))
    # make_step(shape) builds the learner with num_ways=shape.num_ways and jits
    # a step that samples sample_episodes(key, images, num_tasks, *shape).

  Args:
    key: a PRNG key (concrete: the shape is drawn on the host).
    images: as in :func:`sample_episode`.
    num_tasks: episodes (B), all of the drawn shape.
    min_ways, max_ways: classes per episode, inclusive (``max_ways`` at most
      the number of classes).
    min_shots, max_shots: support examples per class, inclusive
      (``max_shots + num_queries`` at most the examples of the smallest class).
    num_queries: query examples per class.
    augment: as in :func:`sample_episode`.

  Returns:
    An :class:`~metalax.types.Episode` with a leading ``[B]`` axis:
    ``support.inputs [B, num_ways * num_shots, ...]``, ``query.inputs [B,
    num_ways * num_queries, ...]``, labels in ``[0, num_ways)``, rows as in
    :func:`sample_episode`. The drawn ``num_ways`` is
    ``support.labels.max() + 1`` and ``num_shots`` is
    ``support.labels.shape[-1] // num_ways``.

  Raises:
    ValueError: as :func:`sample_episode_shape`, or as :func:`sample_episodes`
      for the largest counts.

  References:
    Triantafillou et al., Meta-Dataset: A Dataset of Datasets for Learning to
    Learn from Few Examples, ICLR 2020.
  """
  _check_ranges(min_ways, max_ways, min_shots, max_shots, num_queries)
  _validate(images, max_ways, max_shots, num_queries)
  shape_key, episode_key = jax.random.split(key)
  shape = sample_episode_shape(shape_key, min_ways, max_ways, min_shots, max_shots, num_queries)
  try:
    hash(augment)
  except TypeError:  # not a valid static argument: sample without jit
    return sample_episodes(episode_key, images, num_tasks, *shape, augment)
  return _sample_episodes_jit(episode_key, images, num_tasks, *shape, augment)


# sample_variable_episodes is a host-side function (its shapes are drawn per call), so it jits the sampler
# itself: one compilation per shape (and augment), instead of op-by-op dispatch at every call.
_sample_episodes_jit = jax.jit(sample_episodes, static_argnums=(2, 3, 4, 5, 6))
