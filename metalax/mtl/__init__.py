"""Multi-task learning: objectives, task scheduling, conditioning, architectures, loss weighting,
gradient aggregation, metrics and the training step."""

from metalax.mtl.aggregation import Aggregator
from metalax.mtl.aggregation import DBMTLState
from metalax.mtl.aggregation import GradDropState
from metalax.mtl.aggregation import GradVacState
from metalax.mtl.aggregation import NashMTLState
from metalax.mtl.aggregation import PCGradState
from metalax.mtl.aggregation import aligned_mtl
from metalax.mtl.aggregation import cagrad
from metalax.mtl.aggregation import conflict_free
from metalax.mtl.aggregation import db_mtl
from metalax.mtl.aggregation import dualproj
from metalax.mtl.aggregation import fairgrad
from metalax.mtl.aggregation import graddrop
from metalax.mtl.aggregation import gradvac
from metalax.mtl.aggregation import imtl_g
from metalax.mtl.aggregation import linear_scalarization
from metalax.mtl.aggregation import mgda
from metalax.mtl.aggregation import min_norm_solver
from metalax.mtl.aggregation import nash_mtl
from metalax.mtl.aggregation import pcgrad
from metalax.mtl.aggregation import task_gradient_norms
from metalax.mtl.aggregation import task_gradients
from metalax.mtl.aggregation import upgrad
from metalax.mtl.architectures import CrossStitch
from metalax.mtl.architectures import HardParameterSharing
from metalax.mtl.architectures import MMoE
from metalax.mtl.architectures import MLPTrunk
from metalax.mtl.architectures import MTAN
from metalax.mtl.architectures import SoftParameterSharing
from metalax.mtl.architectures import TaskConditioned
from metalax.mtl.architectures import TaskRouting
from metalax.mtl.architectures import TaskRoutingLayer
from metalax.mtl.architectures import shared_mask
from metalax.mtl.architectures import soft_sharing_penalty
from metalax.mtl.architectures import task_routing_masks
from metalax.mtl.conditioning import AdditiveConditioning
from metalax.mtl.conditioning import ConcatConditioning
from metalax.mtl.conditioning import FiLM
from metalax.mtl.conditioning import MultiHead
from metalax.mtl.experts import CGC
from metalax.mtl.experts import DSelectK
from metalax.mtl.experts import PLE
from metalax.mtl.experts import Sluice
from metalax.mtl.experts import dselect_k_regularizer
from metalax.mtl.experts import experts_shared_mask
from metalax.mtl.experts import sluice_subspace_penalty
from metalax.mtl.experts import smooth_step
from metalax.mtl.loss_balancing import FAMO
from metalax.mtl.loss_balancing import FAMOState
from metalax.mtl.loss_balancing import STCHState
from metalax.mtl.loss_balancing import famo
from metalax.mtl.loss_balancing import geometric_loss
from metalax.mtl.loss_balancing import imtl_l
from metalax.mtl.loss_balancing import stch
from metalax.mtl.metrics import delta_m
from metalax.mtl.objective import TargetStandardizer
from metalax.mtl.objective import fit_standardizer
from metalax.mtl.objective import multitask_loss
from metalax.mtl.objective import multitask_objective
from metalax.mtl.objective import one_hot_descriptors
from metalax.mtl.objective import standardize
from metalax.mtl.objective import task_descriptors
from metalax.mtl.objective import unstandardize
from metalax.mtl.pareto import ParetoHyperNetwork
from metalax.mtl.pareto import ParetoMTLState
from metalax.mtl.pareto import circle_points
from metalax.mtl.pareto import hypervolume
from metalax.mtl.pareto import nondominated
from metalax.mtl.pareto import pareto_mtl
from metalax.mtl.pareto import sample_preferences
from metalax.mtl.scheduling import host_task_schedule
from metalax.mtl.scheduling import round_robin_tasks
from metalax.mtl.scheduling import sample_examples
from metalax.mtl.scheduling import sample_task_batch
from metalax.mtl.scheduling import sample_tasks
from metalax.mtl.scheduling import task_probabilities
from metalax.mtl.step import MethodState
from metalax.mtl.step import TrainState
from metalax.mtl.step import TrainStep
from metalax.mtl.step import train_step
from metalax.mtl.weighting import DynamicWeightAverageState
from metalax.mtl.weighting import GradNormState
from metalax.mtl.weighting import LossWeighting
from metalax.mtl.weighting import RandomLossWeightingState
from metalax.mtl.weighting import dynamic_weight_average
from metalax.mtl.weighting import equal_weighting
from metalax.mtl.weighting import gradnorm
from metalax.mtl.weighting import mgda_ub
from metalax.mtl.weighting import random_loss_weighting
from metalax.mtl.weighting import static_weighting
from metalax.mtl.weighting import uncertainty_weighting

__all__ = (
    "AdditiveConditioning",
    "Aggregator",
    "CGC",
    "ConcatConditioning",
    "CrossStitch",
    "DBMTLState",
    "DSelectK",
    "DynamicWeightAverageState",
    "FAMO",
    "FAMOState",
    "FiLM",
    "GradDropState",
    "GradNormState",
    "GradVacState",
    "HardParameterSharing",
    "LossWeighting",
    "MethodState",
    "MLPTrunk",
    "MMoE",
    "MTAN",
    "MultiHead",
    "NashMTLState",
    "PCGradState",
    "PLE",
    "ParetoHyperNetwork",
    "ParetoMTLState",
    "RandomLossWeightingState",
    "STCHState",
    "Sluice",
    "SoftParameterSharing",
    "TargetStandardizer",
    "TaskConditioned",
    "TaskRouting",
    "TaskRoutingLayer",
    "TrainState",
    "TrainStep",
    "aligned_mtl",
    "cagrad",
    "circle_points",
    "conflict_free",
    "db_mtl",
    "delta_m",
    "dselect_k_regularizer",
    "dualproj",
    "dynamic_weight_average",
    "equal_weighting",
    "experts_shared_mask",
    "fairgrad",
    "famo",
    "fit_standardizer",
    "geometric_loss",
    "graddrop",
    "gradnorm",
    "gradvac",
    "host_task_schedule",
    "hypervolume",
    "imtl_g",
    "imtl_l",
    "linear_scalarization",
    "mgda",
    "mgda_ub",
    "min_norm_solver",
    "multitask_loss",
    "multitask_objective",
    "nash_mtl",
    "nondominated",
    "one_hot_descriptors",
    "pareto_mtl",
    "pcgrad",
    "random_loss_weighting",
    "round_robin_tasks",
    "sample_examples",
    "sample_preferences",
    "sample_task_batch",
    "sample_tasks",
    "shared_mask",
    "sluice_subspace_penalty",
    "smooth_step",
    "soft_sharing_penalty",
    "standardize",
    "static_weighting",
    "stch",
    "task_descriptors",
    "task_gradient_norms",
    "task_gradients",
    "task_probabilities",
    "task_routing_masks",
    "train_step",
    "uncertainty_weighting",
    "unstandardize",
    "upgrad",
)
