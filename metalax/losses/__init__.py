"""Losses as plain array functions returning per-example values."""

from metalax.losses.classification import accuracy
from metalax.losses.classification import cross_entropy
from metalax.losses.distillation import distillation_kl
from metalax.losses.distillation import multi_teacher_distillation
from metalax.losses.regression import squared_error

__all__ = (
    "accuracy",
    "cross_entropy",
    "distillation_kl",
    "multi_teacher_distillation",
    "squared_error",
)
