"""Uncertainty metrics as array functions: predictive likelihood, calibration, interval coverage.

Like :mod:`metalax.losses`, every function takes and returns arrays (no metalax
types), returns per-example values where that makes sense, and leaves the
reduction to the caller. Regression predictions are Gaussians given by a mean
and a standard deviation (``scale``) per target; classification predictions are
logits, or log-probabilities (``softmax`` of log-probabilities gives the
probabilities back, so both work).
"""

import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_LOG_2PI = float(np.log(2 * np.pi))


def gaussian_nll(mean: jax.Array, scale: jax.Array, targets: jax.Array) -> jax.Array:
  """Negative log-likelihood of the targets under independent Gaussians, per example.

  ``-log N(y | mean, scale^2) = log(scale) + (y - mean)^2 / (2 scale^2) + log(2 pi) / 2``,
  summed over the target dimensions (the joint density of a target vector with
  independent components); averaging over examples gives the usual mean NLL.

  Args:
    mean: ``[n, *target_shape]`` predictive means.
    scale: ``[n, *target_shape]`` predictive standard deviations (> 0).
    targets: ``[n, *target_shape]``.

  Returns:
    ``[n]`` negative log-likelihoods (nats).

  Raises:
    ValueError: if the three shapes differ or have no example axis.
  """
  _check_same_shape("gaussian_nll", mean=mean, scale=scale, targets=targets)
  z = (targets - mean) / scale
  nll = jnp.log(scale) + 0.5 * jnp.square(z) + 0.5 * _LOG_2PI
  return jnp.sum(nll.reshape(nll.shape[0], -1), axis=-1)


def gaussian_interval(mean: jax.Array, scale: jax.Array, level: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """The central ``level`` interval of Gaussians: ``mean -/+ z scale`` with ``z = Phi^-1((1 + level) / 2)``.

  Args:
    mean: ``[...]``.
    scale: ``[...]`` (same shape).
    level: probability mass inside the interval, in ``(0, 1)`` (0.95: ``z = 1.95996``).

  Returns:
    ``(lower, upper)``, each shaped like ``mean``.

  Raises:
    ValueError: if ``level`` is not in ``(0, 1)``.
  """
  z = _quantile_of_level(level)
  return mean - z * scale, mean + z * scale


def interval_coverage(mean: jax.Array, scale: jax.Array, targets: jax.Array,
                      level: float = 0.95) -> jax.Array:
  """Whether each target lies in its predictive central interval, per example.

  A calibrated predictor's ``level`` interval holds a fraction ``level`` of the
  targets: the mean of the result over many examples estimates the actual
  coverage, to compare with ``level``.

  Args:
    mean: ``[n, *target_shape]`` predictive means.
    scale: ``[n, *target_shape]`` predictive standard deviations.
    targets: ``[n, *target_shape]``.
    level: nominal coverage in ``(0, 1)``.

  Returns:
    ``[n]`` the fraction of each example's target dimensions inside
    ``[mean - z scale, mean + z scale]`` (0 or 1 for scalar targets).

  Raises:
    ValueError: if the shapes differ or ``level`` is not in ``(0, 1)``.
  """
  _check_same_shape("interval_coverage", mean=mean, scale=scale, targets=targets)
  z = _quantile_of_level(level)
  inside = (jnp.abs(targets - mean) <= z * scale).astype(jnp.result_type(mean.dtype, jnp.float32))
  return jnp.mean(inside.reshape(inside.shape[0], -1), axis=-1)


class ReliabilityDiagram(NamedTuple):
  """The data of a reliability diagram: predictions grouped by confidence.

  Attributes:
    bin_edges: ``[num_bins + 1]`` equal-width edges on ``[0, 1]``; bin ``b``
      holds the confidences in ``(bin_edges[b], bin_edges[b + 1]]`` (the first
      bin also holds 0).
    confidence: ``[num_bins]`` mean confidence (top probability) in each bin; 0
      in an empty bin.
    accuracy: ``[num_bins]`` fraction of correct top predictions in each bin; 0
      in an empty bin.
    counts: ``[num_bins]`` number of predictions in each bin.
  """

  bin_edges: jax.Array
  confidence: jax.Array
  accuracy: jax.Array
  counts: jax.Array


def reliability_diagram(logits: jax.Array, labels: jax.Array, num_bins: int = 15) -> ReliabilityDiagram:
  """Top-label confidence against accuracy, in ``num_bins`` equal-width bins (Guo et al. 2017).

  A prediction's confidence is its largest softmax probability and it is
  correct when that class is the label. Shapes are static (a scatter-add over
  ``num_bins``), so the function runs under ``jit``; flatten a batch of
  episodes to ``[n, num_classes]`` first.

  Args:
    logits: ``[n, num_classes]`` logits or log-probabilities.
    labels: ``[n]`` int class indices.
    num_bins: a static int >= 1 (15 as in Guo et al.).

  Returns:
    A :class:`ReliabilityDiagram`.

  Raises:
    ValueError: if ``logits`` is not ``[n, num_classes]``, ``labels`` is not
      ``[n]`` ints, or ``num_bins`` is not a positive int.

  References:
    Guo, Pleiss, Sun & Weinberger, On Calibration of Modern Neural Networks, ICML 2017.
  """
  _check_classification("reliability_diagram", logits, labels)
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"reliability_diagram: num_bins must be a static int >= 1, got {num_bins!r}.")
  num_bins = int(num_bins)
  probabilities = jax.nn.softmax(logits.astype(jnp.result_type(logits.dtype, jnp.float32)), axis=-1)
  confidence = jnp.max(probabilities, axis=-1)
  correct = (jnp.argmax(probabilities, axis=-1) == labels).astype(confidence.dtype)
  # Bin b holds (b / B, (b + 1) / B]: ceil(c B) - 1, with 0 put in the first bin.
  bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  counts = jax.ops.segment_sum(jnp.ones_like(confidence), bins, num_segments=num_bins)
  total_confidence = jax.ops.segment_sum(confidence, bins, num_segments=num_bins)
  total_correct = jax.ops.segment_sum(correct, bins, num_segments=num_bins)
  safe = jnp.maximum(counts, 1)
  return ReliabilityDiagram(
      bin_edges=jnp.linspace(0.0, 1.0, num_bins + 1, dtype=confidence.dtype),
      confidence=total_confidence / safe, accuracy=total_correct / safe, counts=counts)


def expected_calibration_error(logits: jax.Array, labels: jax.Array, num_bins: int = 15) -> jax.Array:
  """Expected calibration error: ``sum_b (n_b / n) |accuracy_b - confidence_b|``.

  The gap between accuracy and mean confidence in each bin of
  :func:`reliability_diagram`, weighted by the fraction of predictions in it.

  Args:
    logits: ``[n, num_classes]`` logits or log-probabilities.
    labels: ``[n]`` int class indices.
    num_bins: a static int >= 1.

  Returns:
    A scalar in ``[0, 1]``.

  Raises:
    ValueError: as :func:`reliability_diagram`.

  Example:
    >>> ece = expected_calibration_error(logits.reshape(-1, num_ways), labels.reshape(-1))

  References:
    Naeini, Cooper & Hauskrecht, Obtaining Well Calibrated Probabilities Using
    Bayesian Binning, AAAI 2015; Guo et al., ICML 2017.
  """
  diagram = reliability_diagram(logits, labels, num_bins)
  weights = diagram.counts / jnp.sum(diagram.counts)
  return jnp.sum(weights * jnp.abs(diagram.accuracy - diagram.confidence))


def _quantile_of_level(level: float) -> float:
  if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0 < level < 1:
    raise ValueError(f"level must be a number in (0, 1), got {level!r}.")
  return statistics.NormalDist().inv_cdf(0.5 + 0.5 * float(level))


def _check_same_shape(who: str, **arrays: jax.Array) -> None:
  shapes = {name: tuple(getattr(a, "shape", ())) for name, a in arrays.items()}
  first = next(iter(shapes.values()))
  if len(set(shapes.values())) != 1 or len(first) < 1:
    described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
    raise ValueError(f"{who}: expected arrays of one shape [n, ...], got {described}.")


def _check_classification(who: str, logits: jax.Array, labels: jax.Array) -> None:
  if getattr(logits, "ndim", None) != 2:
    raise ValueError(f"{who}: logits must be [n, num_classes], got shape "
                     f"{getattr(logits, 'shape', type(logits).__name__)}.")
  if (getattr(labels, "ndim", None) != 1 or labels.shape[0] != logits.shape[0]
      or not jnp.issubdtype(labels.dtype, jnp.integer)):
    raise ValueError(f"{who}: labels must be [n] = [{logits.shape[0]}] int class indices, got shape "
                     f"{getattr(labels, 'shape', None)} and dtype {getattr(labels, 'dtype', None)}.")
