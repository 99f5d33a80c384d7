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
from metalax.losses.reconstruction import bernoulli_reconstruction
from metalax.losses.reconstruction import gaussian_reconstruction
from metalax.losses.reconstruction import kl_sparsity
from metalax.losses.reconstruction import l1_sparsity
from metalax.losses.regression import squared_error

__all__ = (
    "accuracy",
    "all_pair_losses",
    "all_triplet_losses",
    "bernoulli_reconstruction",
    "collapse_metrics",
    "contrastive_loss",
    "cross_entropy",
    "distillation_kl",
    "effective_rank",
    "embedding_std",
    "gaussian_reconstruction",
    "info_nce",
    "kl_sparsity",
    "l1_sparsity",
    "l2_normalize",
    "mean_nonzero",
    "multi_teacher_distillation",
    "nt_xent",
    "pair_contrastive_loss",
    "pairwise_distances",
    "squared_error",
    "supcon_loss",
    "triplet_loss",
    "triplet_margin_loss",
)
