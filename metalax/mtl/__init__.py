"""Multi-task learning: loss weightings, gradient aggregation and metrics."""

from metalax.mtl.aggregation import Aggregator
from metalax.mtl.aggregation import GradDropState
from metalax.mtl.aggregation import NashMTLState
from metalax.mtl.aggregation import PCGradState
from metalax.mtl.aggregation import aligned_mtl
from metalax.mtl.aggregation import cagrad
from metalax.mtl.aggregation import graddrop
from metalax.mtl.aggregation import imtl_g
from metalax.mtl.aggregation import linear_scalarization
from metalax.mtl.aggregation import mgda
from metalax.mtl.aggregation import min_norm_solver
from metalax.mtl.aggregation import nash_mtl
from metalax.mtl.aggregation import pcgrad
from metalax.mtl.aggregation import task_gradient_norms
from metalax.mtl.aggregation import task_gradients
from metalax.mtl.aggregation import upgrad
from metalax.mtl.metrics import delta_m
from metalax.mtl.weighting import DynamicWeightAverageState
from metalax.mtl.weighting import GradNorm
from metalax.mtl.weighting import GradNormState
from metalax.mtl.weighting import LossWeighting
from metalax.mtl.weighting import RandomLossWeightingState
from metalax.mtl.weighting import dynamic_weight_average
from metalax.mtl.weighting import equal_weighting
from metalax.mtl.weighting import gradnorm
from metalax.mtl.weighting import random_loss_weighting
from metalax.mtl.weighting import static_weighting
from metalax.mtl.weighting import uncertainty_weighting

__all__ = (
    "Aggregator",
    "DynamicWeightAverageState",
    "GradDropState",
    "GradNorm",
    "GradNormState",
    "LossWeighting",
    "NashMTLState",
    "PCGradState",
    "RandomLossWeightingState",
    "aligned_mtl",
    "cagrad",
    "delta_m",
    "dynamic_weight_average",
    "equal_weighting",
    "graddrop",
    "gradnorm",
    "imtl_g",
    "linear_scalarization",
    "mgda",
    "min_norm_solver",
    "nash_mtl",
    "pcgrad",
    "random_loss_weighting",
    "static_weighting",
    "task_gradient_norms",
    "task_gradients",
    "uncertainty_weighting",
    "upgrad",
)
