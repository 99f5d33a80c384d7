"""Losses as plain array functions returning per-example values."""

from metalax.losses.classification import accuracy
from metalax.losses.classification import cross_entropy
from metalax.losses.contrastive import all_pair_losses
from metalax.losses.contrastive import all_triplet_losses
from metalax.losses.contrastive import collapse_metrics
from metalax.losses.contrastive import contrastive_loss
from metalax.losses.contrastive import effective_rank
from metalax.losses.contrastive import embedding_std
from metalax.losses.contrastive import info_nce
from metalax.losses.contrastive import l2_normalize
from metalax.losses.contrastive import mean_nonzero
from metalax.losses.contrastive import nt_xent
from metalax.losses.contrastive import pair_contrastive_loss
from metalax.losses.contrastive import pairwise_distances
from metalax.losses.contrastive import supcon_loss
from metalax.losses.contrastive import triplet_loss
from metalax.losses.contrastive import triplet_margin_loss
from metalax.losses.distillation import distillation_kl
from metalax.losses.distillation import multi_teacher_distillation
from metalax.losses.metric_learning import arcface_loss
from metalax.losses.metric_learning import circle_loss
from metalax.losses.metric_learning import cosface_loss
from metalax.losses.metric_learning import lifted_structure_loss
from metalax.losses.metric_learning import multi_similarity_loss
from metalax.losses.metric_learning import n_pairs_loss
from metalax.losses.metric_learning import proxy_anchor_loss
from metalax.losses.metric_learning import proxy_nca_loss
from metalax.losses.miners import batch_hard_miner
from metalax.losses.miners import multi_similarity_miner
from metalax.losses.miners import triplet_margin_miner
from metalax.losses.reconstruction import bernoulli_reconstruction
from metalax.losses.reconstruction import gaussian_reconstruction
from metalax.losses.reconstruction import kl_sparsity
from metalax.losses.reconstruction import l1_sparsity
from metalax.losses.regression import squared_error
from metalax.losses.self_supervised import QueueState
from metalax.losses.self_supervised import barlow_twins_loss
from metalax.losses.self_supervised import byol_loss
from metalax.losses.self_supervised import moco_loss
from metalax.losses.self_supervised import momentum_schedule
from metalax.losses.self_supervised import queue_init
from metalax.losses.self_supervised import queue_update
from metalax.losses.self_supervised import simsiam_loss
from metalax.losses.self_supervised import target_network_update
from metalax.losses.self_supervised import vicreg_loss

__all__ = (
    "QueueState",
    "accuracy",
    "all_pair_losses",
    "all_triplet_losses",
    "arcface_loss",
    "barlow_twins_loss",
    "batch_hard_miner",
    "bernoulli_reconstruction",
    "byol_loss",
    "circle_loss",
    "collapse_metrics",
    "contrastive_loss",
    "cosface_loss",
    "cross_entropy",
    "distillation_kl",
    "effective_rank",
    "embedding_std",
    "gaussian_reconstruction",
    "info_nce",
    "kl_sparsity",
    "l1_sparsity",
    "l2_normalize",
    "lifted_structure_loss",
    "mean_nonzero",
    "moco_loss",
    "momentum_schedule",
    "multi_similarity_loss",
    "multi_similarity_miner",
    "multi_teacher_distillation",
    "n_pairs_loss",
    "nt_xent",
    "pair_contrastive_loss",
    "pairwise_distances",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "queue_init",
    "queue_update",
    "simsiam_loss",
    "squared_error",
    "supcon_loss",
    "target_network_update",
    "triplet_loss",
    "triplet_margin_loss",
    "triplet_margin_miner",
    "vicreg_loss",
)
