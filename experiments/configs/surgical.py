"""Surgical fine-tuning (Lee et al. 2023) on MNIST: pretraining, then fine-tuning one block at a time.

``--config.FIELD=VALUE`` overrides a field (``--help`` lists them all).
"""

import ml_collections

from metalax import training

PRESETS = {"default": dict()}

HELP = {
    "preset": "the preset these values started from (informational)",
    "conv4_variant": "the Conv-4 classifier: strided | maxpool",
    "hidden": "Conv-4 filters per layer",
    "norm": "batch (batch statistics) | layer | group | none",
    "batch_size": "pretraining batch size",
    "lr": "pretraining Adam learning rate",
    "review_k": "hard-example review: the highest-loss training examples written as PNG + CSV",
    "corrections": "a reviewed CSV whose corrected labels replace the training labels",
    "shifts": "distribution shifts: inverted | noisy | permuted",
    "noise_level": "noisy shift: Gaussian pixel noise std",
    "selections": "parameter selections fine-tuned: none | all | block1..block4 | head",
    "target_shots": "labelled target examples per class",
    "finetune_steps": "full-batch Adam steps of fine-tuning",
    "finetune_lrs": "fine-tuning rates, chosen per selection on held-out shifted training images",
    "validation_shots": "held-out shifted training images per class for choosing the rate",
    "num_seeds": "draws of the target examples",
    "num_train_examples": "use the first this many MNIST training images (0: all)",
    "num_test_examples": "use the first this many MNIST test images (0: all)",
}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The surgical fine-tuning config."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = training.base_config()
  config.preset = preset
  config.conv4_variant = "strided"
  config.hidden = 32
  config.norm = "batch"
  config.batch_size = 128
  config.lr = 1e-3
  config.num_iterations = 1500
  config.steps_per_call = 50
  config.checkpoint_every = 500
  config.review_k = 40
  config.corrections = ""
  config.shifts = ("inverted", "noisy", "permuted")
  config.noise_level = 0.6
  config.selections = ("none", "all", "block1", "block2", "block3", "block4", "head")
  config.target_shots = 10
  config.finetune_steps = 100
  config.finetune_lrs = (1e-3, 1e-2, 1e-1)
  config.validation_shots = 50
  config.num_seeds = 3
  config.num_train_examples = 0
  config.num_test_examples = 0
  config.update(PRESETS[preset])
  return config
