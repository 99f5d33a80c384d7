"""Multi-task evaluation metrics."""

import numpy as np


def delta_m(metrics, baselines, higher_is_better, task_index=None) -> float:
  r"""Multi-task gain :math:`\Delta_m\%` over single-task baselines.

  The mean relative change of every metric against its single-task baseline,
  signed so that an improvement counts positive (Maninis, Radosavovic &
  Kokkinos, 2019; the form used by MTAN, CAGrad and Nash-MTL):

  .. math::
    \Delta_m = \frac{100}{K} \sum_{k=1}^{K} (-1)^{l_k}
      \frac{M_{m,k} - M_{b,k}}{|M_{b,k}|},

  with :math:`l_k = 1` where lower is better. With ``task_index`` the relative
  changes are first averaged within each task, then over tasks (LibMTL's
  ``count_improvement``), so tasks with many metrics do not dominate. (For the
  usual positive metrics ``|M_b| = M_b``.) Computed in NumPy on final
  evaluation numbers; not meant for ``jit``.

  Args:
    metrics: ``[K]`` the multi-task model's metrics.
    baselines: ``[K]`` the single-task models' metrics (non-zero).
    higher_is_better: ``[K]`` bools, True where a higher value is better
      (accuracy, mIoU), False where lower is better (errors, losses).
    task_index: optional ``[K]`` ints, the task each metric belongs to.

  Returns:
    :math:`\Delta_m` in percent (a Python float); positive means the
    multi-task model is better on average.

  Raises:
    ValueError: if the arguments are not vectors of the same length, or a
      baseline is zero.

  Example:
    >>> # mIoU 0.40 -> 0.42 (+5%), depth error 0.60 -> 0.57 (-5%, better).
    >>> round(delta_m([0.42, 0.57], [0.40, 0.60], [True, False]), 6)
    5.0

  References:
    Maninis, Radosavovic & Kokkinos, Attentive Single-Tasking of Multiple
    Tasks, CVPR 2019. Lin & Zhang, LibMTL: A Python Library for Multi-Task
    Learning, JMLR 2023.
  """
  metrics = np.asarray(metrics, dtype=np.float64)
  baselines = np.asarray(baselines, dtype=np.float64)
  higher_is_better = np.asarray(higher_is_better, dtype=bool)
  if (metrics.ndim != 1 or metrics.shape != baselines.shape
      or metrics.shape != higher_is_better.shape or metrics.size == 0):
    raise ValueError(
        "metrics, baselines and higher_is_better must be non-empty vectors of the "
        f"same length [K], got shapes {metrics.shape}, {baselines.shape} and "
        f"{higher_is_better.shape}.")
  if np.any(baselines == 0):
    raise ValueError(f"baselines must be non-zero (they divide), got {baselines.tolist()}.")
  sign = np.where(higher_is_better, 1.0, -1.0)
  changes = sign * (metrics - baselines) / np.abs(baselines)
  if task_index is None:
    return float(100.0 * np.mean(changes))
  task_index = np.asarray(task_index)
  if task_index.shape != metrics.shape:
    raise ValueError(f"task_index must have shape {metrics.shape}, got {task_index.shape}.")
  per_task = [np.mean(changes[task_index == t]) for t in np.unique(task_index)]
  return float(100.0 * np.mean(per_task))
