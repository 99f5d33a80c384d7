"""Losses as plain array functions returning per-example values."""

from metalax.losses.classification import accuracy
from metalax.losses.classification import cross_entropy
from metalax.losses.regression import squared_error

__all__ = (
    "accuracy",
    "cross_entropy",
    "squared_error",
)
