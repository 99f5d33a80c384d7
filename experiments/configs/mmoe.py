"""MMoE's synthetic benchmark (Ma et al., KDD 2018, Section 4), for ``experiments/mmoe.py``.

Two regression tasks whose label correlation is set by ``p``; d=100, c=0.3, m=5 sinusoids, 10k/1k/1k examples.
The preset: shared-bottom (``hard_sharing``), OMoE and MMoE trained with the sum of the two MSEs (``equal``),
100 runs per architecture and correlation, 3,000 iterations, correlations 1.0, 0.9, 0.5. Sizes of the paper's
Sec. 5: 8 single-layer experts of 16 units, single-layer towers of 8, a shared bottom of 113 units (the weights
of the experts and towers: 100*16*8 + 16*8*2 = 13,056 =~ 113*(100+8*2)). Learning rates: the paper's grid
{1e-4, 1e-3, 1e-2}, each architecture's lowest mean validation MSE at p=1 over 30 runs (docs/multitask.md).
``--config.FIELD=VALUE`` overrides a field (``--help`` lists them all).
"""

import ml_collections

from experiments import multitask

PRESETS = {
    "mmoe": dict(num_seeds=100, num_iterations=3000, batch_size=128, lr=1e-3, steps_per_call=100,
                 checkpoint_every=100),
}

# Fields of the nested mmoe config that a preset changes.
MMOE_PRESETS = {
    "mmoe": dict(correlations=(1.0, 0.9, 0.5), shared_bottom_features=113,
                 learning_rates=dict(hard_sharing=1e-3, omoe=1e-2, mmoe=1e-2)),
}

HELP = {
    **multitask.HELP,
    "architectures": "architectures compared in one table (a tuple of --config.architecture names); () to train "
                     "--config.architecture",
    "mmoe.correlations": "task correlations p (a tuple in [-1, 1])",
    "mmoe.dim": "input dimension d",
    "mmoe.scale": "c, the scale of the task weight vectors",
    "mmoe.num_sinusoids": "m, sinusoids added to each label",
    "mmoe.noise_std": "label noise standard deviation",
    "mmoe.num_train": "training examples per run",
    "mmoe.num_valid": "validation examples per run",
    "mmoe.num_test": "test examples per run",
    "mmoe.shared_bottom_features": "hard_sharing: the shared bottom's width (the others use mlp_features)",
    "mmoe.learning_rates.hard_sharing": "hard_sharing's Adam learning rate; 0: lr",
    "mmoe.learning_rates.omoe": "omoe's Adam learning rate; 0: lr",
    "mmoe.learning_rates.mmoe": "mmoe's Adam learning rate; 0: lr",
    "mmoe.num_curve": "training examples the loss curve is measured on (the final MSE uses all)",
}


def get_config(preset: str = "mmoe") -> ml_collections.ConfigDict:
  """The MMoE benchmark config; ``checkpoint_every`` is also the interval of the loss-curve points."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = multitask.base_config()
  config.preset = preset
  config.dataset = "mmoe"
  config.architecture = ""
  config.architectures = ("hard_sharing", "omoe", "mmoe")
  config.trunk = "mlp"
  config.mlp_features = (16,)
  config.head_features = (8,)
  config.num_experts = 8
  config.method = "equal"
  config.num_iterations = 1500
  config.checkpoint_every = 100
  config.mmoe = ml_collections.ConfigDict(dict(
      correlations=(1.0, 0.9, 0.7, 0.5, 0.0), dim=100, scale=0.3, num_sinusoids=5, noise_std=0.01,
      num_train=10_000, num_valid=1_000, num_test=1_000, shared_bottom_features=128,
      learning_rates=ml_collections.ConfigDict(dict(hard_sharing=0.0, omoe=0.0, mmoe=0.0)), num_curve=2_000))
  config.update(PRESETS[preset])
  config.mmoe.update(MMOE_PRESETS.get(preset, {}))
  return config
