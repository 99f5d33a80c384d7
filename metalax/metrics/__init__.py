"""Evaluation metrics as array functions."""

from metalax.metrics.calibration import ReliabilityDiagram
from metalax.metrics.calibration import expected_calibration_error
from metalax.metrics.calibration import gaussian_interval
from metalax.metrics.calibration import gaussian_nll
from metalax.metrics.calibration import interval_coverage
from metalax.metrics.calibration import reliability_diagram

__all__ = (
    "ReliabilityDiagram",
    "expected_calibration_error",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "reliability_diagram",
)
