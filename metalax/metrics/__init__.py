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
from metalax.metrics.retrieval import adjusted_mutual_info
from metalax.metrics.retrieval import clustering_metrics
from metalax.metrics.retrieval import kmeans
from metalax.metrics.retrieval import map_at_r
from metalax.metrics.retrieval import normalized_mutual_info
from metalax.metrics.retrieval import r_precision
from metalax.metrics.retrieval import recall_at_k
from metalax.metrics.retrieval import retrieval_metrics

__all__ = (
    "DepthErrorSums",
    "NormalAngleStats",
    "ReliabilityDiagram",
    "adjusted_mutual_info",
    "clustering_metrics",
    "confusion_matrix",
    "depth_error_sums",
    "depth_errors",
    "expected_calibration_error",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "kmeans",
    "map_at_r",
    "normal_angle_stats",
    "normal_angles",
    "normalized_mutual_info",
    "r_precision",
    "recall_at_k",
    "reliability_diagram",
    "retrieval_metrics",
    "roc_auc",
    "segmentation_scores",
)
