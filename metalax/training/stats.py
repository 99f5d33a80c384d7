"""Small statistics for reporting runs: a mean with its confidence interval, and a timer."""

import math
import time
from typing import Any, Callable

import jax
import numpy as np


def mean_and_interval(values: Any, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """The mean of ``values`` along ``axis`` and the half-width of its 95% normal confidence interval.

  Args:
    values: ``[..., n, ...]`` numbers, e.g. ``[n]`` per-episode accuracies.
    axis: the axis of the ``n >= 2`` samples.

  Returns:
    ``(mean, 1.96 * std / sqrt(n))`` with ``std`` the sample standard deviation
    (``ddof=1``), each of ``values``' shape without ``axis``.

  Raises:
    ValueError: for fewer than two samples (no interval).
  """
  values = np.asarray(values, np.float64)
  n = values.shape[axis]
  if n < 2:
    raise ValueError(f"a confidence interval needs at least 2 samples along axis {axis}, got {n}.")
  return values.mean(axis), 1.96 * values.std(axis, ddof=1) / math.sqrt(n)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """``(fn(), seconds)``, timed until the result's arrays are ready."""
  begin = time.perf_counter()
  result = jax.block_until_ready(fn())
  return result, time.perf_counter() - begin
