"""Evaluation metrics as array functions."""

from metalax.metrics.calibration import ReliabilityDiagram
from metalax.metrics.calibration import expected_calibration_error
from metalax.metrics.calibration import gaussian_interval
from metalax.metrics.calibration import gaussian_nll
from metalax.metrics.calibration import interval_coverage
from metalax.metrics.calibration import reliability_diagram
from metalax.metrics.classification import roc_auc
from metalax.metrics.dense import DepthErrorSums
from metalax.metrics.dense import NormalAngleStats
from metalax.metrics.dense import confusion_matrix
from metalax.metrics.dense import depth_error_sums
from metalax.metrics.dense import depth_errors
from metalax.metrics.dense import normal_angle_stats
from metalax.metrics.dense import normal_angles
from metalax.metrics.dense import segmentation_scores

__all__ = (
    "DepthErrorSums",
    "NormalAngleStats",
    "ReliabilityDiagram",
    "confusion_matrix",
    "depth_error_sums",
    "depth_errors",
    "expected_calibration_error",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "normal_angle_stats",
    "normal_angles",
    "reliability_diagram",
    "roc_auc",
    "segmentation_scores",
)
