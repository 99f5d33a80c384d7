"""Uncertainty metrics against NumPy transcriptions of their definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import metrics


def numpy_ece(probabilities, labels, num_bins):
  """Guo et al.'s ECE as a loop over bins (b / B, (b + 1) / B]."""
  confidence = probabilities.max(-1)
  correct = probabilities.argmax(-1) == labels
  ece, rows = 0.0, []
  for b in range(num_bins):
    low, high = b / num_bins, (b + 1) / num_bins
    in_bin = (confidence > low) & (confidence <= high)
    if b == 0:
      in_bin |= confidence == 0
    if in_bin.any():
      accuracy, mean_confidence = correct[in_bin].mean(), confidence[in_bin].mean()
      ece += in_bin.mean() * abs(accuracy - mean_confidence)
      rows.append((accuracy, mean_confidence, in_bin.sum()))
    else:
      rows.append((0.0, 0.0, 0))
  return ece, np.array(rows)


def test_gaussian_nll_matches_formula_and_sums_target_dims():
  rng = np.random.default_rng(0)
  mean, targets = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
  scale = rng.uniform(0.2, 2.0, size=(6, 3))
  expected = np.sum(np.log(scale) + 0.5 * ((targets - mean) / scale) ** 2 + 0.5 * np.log(2 * np.pi), axis=-1)
  np.testing.assert_allclose(metrics.gaussian_nll(mean, scale, targets), expected, rtol=1e-5)
  from scipy import stats
  np.testing.assert_allclose(metrics.gaussian_nll(mean[:, :1], scale[:, :1], targets[:, :1]),
                             -stats.norm.logpdf(targets[:, 0], mean[:, 0], scale[:, 0]), rtol=1e-5)
  with pytest.raises(ValueError, match="one shape"):
    metrics.gaussian_nll(mean, scale[:, :2], targets)


def test_interval_coverage_and_interval():
  mean = np.zeros((5, 1))
  scale = np.ones((5, 1))
  targets = np.array([[0.0], [1.95], [-1.97], [3.0], [-1.0]])
  np.testing.assert_array_equal(metrics.interval_coverage(mean, scale, targets), [1, 1, 0, 0, 1])
  np.testing.assert_array_equal(metrics.interval_coverage(mean, scale, targets, level=0.5), [1, 0, 0, 0, 0])
  lower, upper = metrics.gaussian_interval(jnp.asarray(2.0), jnp.asarray(3.0), 0.95)
  np.testing.assert_allclose([lower, upper], [2 - 3 * 1.959964, 2 + 3 * 1.959964], rtol=1e-5)
  # Samples from the predictive itself are covered at the nominal rate.
  samples = np.random.default_rng(0).normal(size=(20000, 2)).astype(np.float32) * 0.5 + 1.0
  coverage = metrics.interval_coverage(np.ones_like(samples), np.full_like(samples, 0.5), samples, 0.9)
  assert abs(float(jnp.mean(coverage)) - 0.9) < 0.01
  with pytest.raises(ValueError, match="level"):
    metrics.interval_coverage(mean, scale, targets, level=1.0)


def test_ece_and_reliability_diagram_match_numpy_loop():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(200, 5)) * 2
  labels = rng.integers(0, 5, size=200)
  probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  compute = jax.jit(lambda logits, labels: (metrics.expected_calibration_error(logits, labels, 10),
                                            metrics.reliability_diagram(logits, labels, 10)))
  ece, diagram = compute(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  expected_ece, rows = numpy_ece(probabilities, labels, 10)
  np.testing.assert_allclose(ece, expected_ece, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(diagram.accuracy, rows[:, 0], atol=1e-6)
  np.testing.assert_allclose(diagram.confidence, rows[:, 1], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(diagram.counts, rows[:, 2])
  np.testing.assert_allclose(diagram.bin_edges, np.linspace(0, 1, 11), atol=1e-7)
  # Log-probabilities give the same result as logits.
  log_probabilities = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(metrics.expected_calibration_error(log_probabilities, jnp.asarray(labels), 10),
                             expected_ece, rtol=1e-4, atol=1e-6)


def test_ece_of_a_perfectly_calibrated_predictor_is_small_and_edge_cases():
  # Labels drawn from the predicted probabilities: ECE -> 0 as n grows.
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5000, 3)).astype(np.float32) * 1.5
  probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  labels = (rng.uniform(size=(5000, 1)) > np.cumsum(probabilities, -1)).sum(-1)
  assert float(metrics.expected_calibration_error(logits, labels)) < 0.03
  # A confident, always-right predictor: accuracy 1 in the top bin, ECE = 1 - confidence.
  logits = jnp.array([[10.0, 0.0], [0.0, 10.0]])
  expected = 1 - 1 / (1 + math.exp(-10))
  np.testing.assert_allclose(metrics.expected_calibration_error(logits, jnp.array([0, 1])), expected, atol=1e-7)
  with pytest.raises(ValueError, match="labels must be"):
    metrics.expected_calibration_error(logits, jnp.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="num_bins"):
    metrics.reliability_diagram(logits, jnp.array([0, 1]), 0)
