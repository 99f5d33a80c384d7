"""Tests for metalax.mtl.metrics."""

import numpy as np
import pytest

from metalax import mtl


def test_delta_m_hand_computed():
  # NYUv2-like: mIoU (higher better), pixel acc (higher), abs err (lower), rel err (lower).
  baselines = [0.40, 0.60, 0.50, 0.20]
  metrics = [0.44, 0.57, 0.45, 0.21]
  # +10%, -5%, +10% (error went down), -5% (error went up) -> mean +2.5%.
  assert mtl.delta_m(metrics, baselines, [True, True, False, False]) == pytest.approx(2.5)


def test_delta_m_per_task_average_matches_libmtl_example():
  # LibMTL count_improvement docstring example: A = [96, 98] -> [93, 99], B = [0.2] -> [0.5].
  # Weights {'A': [1, 0], 'B': [1]}: 1 marks higher-is-better.
  value = mtl.delta_m([93, 99, 0.5], [96, 98, 0.2], [True, False, True], task_index=[0, 0, 1])
  task_a = np.mean([(93 - 96) / 96, -(99 - 98) / 98])
  task_b = (0.5 - 0.2) / 0.2
  assert value == pytest.approx(100 * np.mean([task_a, task_b]))
  flat = mtl.delta_m([93, 99, 0.5], [96, 98, 0.2], [True, False, True])
  assert flat == pytest.approx(100 * np.mean([(93 - 96) / 96, -(99 - 98) / 98, task_b]))


def test_delta_m_identical_is_zero_and_errors():
  assert mtl.delta_m([1.0, 2.0], [1.0, 2.0], [True, False]) == 0.0
  with pytest.raises(ValueError, match="same length"):
    mtl.delta_m([1.0], [1.0, 2.0], [True, False])
  with pytest.raises(ValueError, match="non-zero"):
    mtl.delta_m([1.0], [0.0], [True])
