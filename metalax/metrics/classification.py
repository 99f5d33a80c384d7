"""Ranking metrics for binary classification: the exact, tie-aware ROC AUC.

Array functions with static shapes (they run under ``jit`` and ``vmap``), as the
rest of :mod:`metalax.metrics`.
"""

import jax
import jax.numpy as jnp


def roc_auc(scores: jax.Array, labels: jax.Array) -> jax.Array:
  r"""Area under the ROC curve, exact and tie-aware (the Mann-Whitney statistic).

  .. math::
    \mathrm{AUC} = \frac{1}{PN}\sum_{i:\,y_i=1}\sum_{j:\,y_j=0}
      \bigl([s_i > s_j] + \tfrac12 [s_i = s_j]\bigr),

  the probability that a random positive scores above a random negative, a tie
  counting one half: the trapezoidal area under the ROC curve with one
  threshold per distinct score (``sklearn.metrics.roc_auc_score``), not the
  area over a fixed grid of thresholds. Computed in ``O(n log n)``: for each
  positive, the numbers of negatives below and equal to its score come from a
  binary search in the sorted negative scores, and their means are averaged.
  Accumulated in float32 (float64 under ``jax_enable_x64``): exact up to that
  rounding.

  For several binary tasks, ``jax.vmap(roc_auc, in_axes=1)(scores, labels)``
  on ``[n, K]`` arrays gives the ``[K]`` AUCs.

  Args:
    scores: ``[n]`` finite real scores, higher meaning more likely positive
      (logits, probabilities, ...).
    labels: ``[n]`` bools, or 0/1 ints, 1 for positive.

  Returns:
    A scalar; NaN when ``labels`` has no positive or no negative.

  Raises:
    ValueError: if ``scores`` and ``labels`` are not vectors of the same length.

  Example:
    >>> float(roc_auc(jnp.array([0.1, 0.4, 0.4, 0.8]), jnp.array([0, 0, 1, 1])))
    0.875

  References:
    Hanley & McNeil, The Meaning and Use of the Area under a Receiver Operating
    Characteristic (ROC) Curve, Radiology 1982 (AUC = the Mann-Whitney U / PN).
  """
  if (not hasattr(scores, "ndim") or not hasattr(labels, "ndim") or scores.ndim != 1
      or scores.shape != labels.shape):
    raise ValueError("roc_auc: scores and labels must be vectors [n] of the same length, got "
                     f"{getattr(scores, 'shape', scores)} and {getattr(labels, 'shape', labels)}.")
  dtype = jnp.result_type(scores.dtype, jnp.float32)
  scores = scores.astype(dtype)
  positive = labels.astype(bool)
  num_positive = jnp.sum(positive)
  num_negative = scores.shape[0] - num_positive
  # Negatives sorted, positives pushed to the end (+inf never counts as below or equal).
  negatives = jnp.sort(jnp.where(positive, jnp.inf, scores))
  below = jnp.searchsorted(negatives, scores, side="left")
  below_or_equal = jnp.minimum(jnp.searchsorted(negatives, scores, side="right"), num_negative)
  wins = (below + below_or_equal).astype(dtype) / 2  # per score: #neg < s + #neg == s / 2
  safe_negative = jnp.maximum(num_negative, 1).astype(dtype)
  total = jnp.sum(jnp.where(positive, wins / safe_negative, 0.0))
  auc = total / jnp.maximum(num_positive, 1).astype(dtype)
  return jnp.where((num_positive > 0) & (num_negative > 0), auc, jnp.nan)
