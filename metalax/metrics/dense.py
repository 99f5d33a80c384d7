r"""Dense-prediction metrics: segmentation (mIoU, pixel accuracy), depth errors, surface-normal angles.

The metrics of the NYUv2 / Cityscapes multi-task benchmarks (MTAN, LibMTL):
every function is an array function with static shapes (``jit`` / ``vmap``
work), channels last. Evaluation over a dataset sums the per-batch statistics
that add up (a confusion matrix, :class:`DepthErrorSums`) and turns them into
scores at the end; the normal statistics take the angles of all the batches
at once (a median does not add up)::

  confusion = sum(confusion_matrix(pred, label, 13) for pred, label in batches)
  miou, pixel_acc = segmentation_scores(confusion)

As LibMTL's NYUv2 metrics: segmentation pixels whose label is outside
``[0, C)`` (``-1`` in the preprocessed NYUv2 files) are ignored; depth pixels
whose ground truth is 0 are ignored; normal pixels whose ground truth is the
zero vector are ignored; the absolute and relative depth errors are means over
all valid pixels of the dataset; the angle statistics are over all valid
pixels of the dataset. Their directions, for :func:`metalax.mtl.delta_m`:
higher is better for mIoU, pixel accuracy and the three "within" fractions,
lower for the depth errors and the mean and median angle.

References:
  Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR
  2019 (the NYUv2 and Cityscapes protocol). Eigen & Fergus, Predicting Depth,
  Surface Normals and Semantic Labels with a Common Multi-Scale Convolutional
  Architecture, ICCV 2015 (the normal statistics). Lin & Zhang, LibMTL,
  JMLR 2023.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _check_same_shape(name, **arrays):
  shapes = {k: tuple(getattr(v, "shape", ())) for k, v in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"{name}: " + ", ".join(shapes) + f" must have the same shape, got {shapes}.")


def _float(x):
  return x.astype(jnp.result_type(x.dtype, jnp.float32))


# ---------------------------------------------------------------------------
# Segmentation.


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Counts of (true class, predicted class) pairs over the labelled pixels.

  Args:
    predictions: ``[...]`` int predicted classes (e.g. ``argmax`` of the logits
      over their class axis).
    labels: ``[...]`` int true classes, same shape; values outside
      ``[0, num_classes)`` (``-1``, ``255``) mark unlabelled pixels, which are
      not counted.
    num_classes: a static int ``C``.

  Returns:
    ``[C, C]`` int32, ``confusion[t, p]`` = number of pixels of class ``t``
    predicted as ``p``. Confusion matrices of batches add up.

  Raises:
    ValueError: on different shapes or a non-positive ``num_classes``.

  Example:
    >>> confusion_matrix(jnp.array([0, 1, 1, 0]), jnp.array([0, 1, 0, -1]), 2).tolist()
    [[1, 1], [0, 1]]
  """
  _check_same_shape("confusion_matrix", predictions=predictions, labels=labels)
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}.")
  labels = labels.reshape(-1).astype(jnp.int32)
  predictions = predictions.reshape(-1).astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + jnp.clip(predictions, 0, num_classes - 1), 0)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(valid.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""Mean intersection over union and pixel accuracy of a confusion matrix.

  :math:`\mathrm{IoU}_c = M_{cc} / (\sum_p M_{cp} + \sum_t M_{tc} - M_{cc})`,
  mIoU their mean over the classes that occur in the labels or the
  predictions (a class absent from both has no IoU; LibMTL's mean then gives
  NaN), and pixel accuracy :math:`\sum_c M_{cc} / \sum M`.

  Args:
    confusion: ``[C, C]`` counts from :func:`confusion_matrix` (summed over
      batches).

  Returns:
    ``(miou, pixel_accuracy)``, scalars in ``[0, 1]``.

  Example:
    >>> miou, acc = segmentation_scores(jnp.array([[1, 1], [0, 1]]))
    >>> round(float(miou), 4), round(float(acc), 4)  # IoUs 1/2 and 1/2
    (0.5, 0.6667)
  """
  if getattr(confusion, "ndim", 0) != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"segmentation_scores: confusion must be [C, C], got "
                     f"{getattr(confusion, 'shape', confusion)}.")
  confusion = _float(confusion)
  hits = jnp.diag(confusion)
  union = jnp.sum(confusion, 0) + jnp.sum(confusion, 1) - hits
  present = union > 0
  iou = jnp.where(present, hits / jnp.where(present, union, 1.0), 0.0)
  miou = jnp.sum(iou) / jnp.maximum(jnp.sum(present), 1)
  accuracy = jnp.sum(hits) / jnp.maximum(jnp.sum(confusion), 1.0)
  return miou, accuracy


# ---------------------------------------------------------------------------
# Depth.


class DepthErrorSums(NamedTuple):
  """Sums over the valid pixels (ground truth not 0); batches add up with ``jax.tree.map(jnp.add, ...)``.

  Attributes:
    absolute: sum of ``|prediction - target|``.
    relative: sum of ``|prediction - target| / target``.
    count: number of valid pixels.
  """

  absolute: jax.Array
  relative: jax.Array
  count: jax.Array


def depth_error_sums(predictions: jax.Array, targets: jax.Array) -> DepthErrorSums:
  """Absolute and relative depth-error sums over the pixels with a ground truth.

  Args:
    predictions: ``[n, H, W]`` or ``[n, H, W, 1]`` predicted depths.
    targets: same shape, ground-truth depths, 0 where there is none (as in the
      preprocessed NYUv2 and Cityscapes files).

  Returns:
    A :class:`DepthErrorSums`; :func:`depth_errors` turns it into the means.

  Raises:
    ValueError: on different shapes.
  """
  _check_same_shape("depth_error_sums", predictions=predictions, targets=targets)
  predictions, targets = _float(predictions), _float(targets)
  valid = targets != 0
  error = jnp.where(valid, jnp.abs(predictions - targets), 0.0)
  relative = error / jnp.where(valid, jnp.abs(targets), 1.0)
  return DepthErrorSums(jnp.sum(error), jnp.sum(relative), jnp.sum(valid))


def depth_errors(sums: DepthErrorSums) -> tuple[jax.Array, jax.Array]:
  """``(absolute error, relative error)``: the means over all valid pixels (NaN if there is none).

  The relative error divides by ``|target|`` (LibMTL divides by ``target``;
  the same for the positive depths of the datasets).
  """
  count = _float(jnp.asarray(sums.count))
  safe = jnp.maximum(count, 1.0)
  nan = jnp.array(jnp.nan, count.dtype)
  return (jnp.where(count > 0, sums.absolute / safe, nan), jnp.where(count > 0, sums.relative / safe, nan))


# ---------------------------------------------------------------------------
# Surface normals.


class NormalAngleStats(NamedTuple):
  """Angle-error statistics over the valid pixels, in degrees and fractions.

  Attributes:
    mean: mean angle error (lower is better).
    median: median angle error (lower is better; the mean of the two middle
      values for an even count, as ``numpy.median``).
    within_11_25: fraction of pixels with error below 11.25 degrees (higher is better).
    within_22_5: fraction below 22.5 degrees.
    within_30: fraction below 30 degrees.
  """

  mean: jax.Array
  median: jax.Array
  within_11_25: jax.Array
  within_22_5: jax.Array
  within_30: jax.Array


def normal_angles(predictions: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""Per-pixel angle between predicted and true surface normals, in degrees.

  The prediction is normalised to unit length, the target is taken as given
  (unit length in the preprocessed NYUv2 files), and the angle is
  :math:`\arccos(\mathrm{clip}(\hat p \cdot t, -1, 1))`, as LibMTL and MTAN.

  Args:
    predictions: ``[..., 3]`` predicted normals (any length).
    targets: ``[..., 3]`` ground-truth unit normals, the zero vector where
      there is none.

  Returns:
    ``(angles [...], valid [...])``: degrees, and whether the pixel has a
    ground truth (a non-zero target; LibMTL tests that the components do not
    sum to 0, the same except for vectors whose components sum to exactly 0).

  Raises:
    ValueError: on different shapes.
  """
  _check_same_shape("normal_angles", predictions=predictions, targets=targets)
  predictions, targets = _float(predictions), _float(targets)
  norms = jnp.linalg.norm(predictions, axis=-1, keepdims=True)
  unit = predictions / jnp.where(norms > 0, norms, 1.0)
  cosine = jnp.clip(jnp.sum(unit * targets, axis=-1), -1.0, 1.0)
  valid = jnp.any(targets != 0, axis=-1)
  return jnp.degrees(jnp.arccos(cosine)), valid


def normal_angle_stats(angles: jax.Array, valid: jax.Array | None = None) -> NormalAngleStats:
  """Mean, median and within-threshold fractions of angle errors over the valid pixels.

  Give it the angles of the whole evaluation set (concatenate the batches'
  outputs of :func:`normal_angles`): the median does not add up over batches.

  Args:
    angles: ``[...]`` angle errors in degrees.
    valid: ``[...]`` bools (all valid when None).

  Returns:
    A :class:`NormalAngleStats` (NaN fields when no pixel is valid).
  """
  angles = _float(angles).reshape(-1)
  valid = jnp.ones(angles.shape, bool) if valid is None else jnp.asarray(valid, bool).reshape(-1)
  if valid.shape != angles.shape:
    raise ValueError(f"normal_angle_stats: angles and valid must have the same size, got "
                     f"{angles.shape} and {valid.shape}.")
  count = jnp.sum(valid)
  safe = jnp.maximum(count, 1).astype(angles.dtype)
  ordered = jnp.sort(jnp.where(valid, angles, jnp.inf))
  low = ordered[jnp.maximum(count - 1, 0) // 2]
  high = ordered[jnp.minimum(count // 2, angles.shape[0] - 1)]
  within = lambda degrees: jnp.sum(valid & (angles < degrees)) / safe
  stats = NormalAngleStats(jnp.sum(jnp.where(valid, angles, 0.0)) / safe, (low + high) / 2,
                           within(11.25), within(22.5), within(30.0))
  return NormalAngleStats(*(jnp.where(count > 0, s, jnp.nan) for s in stats))
