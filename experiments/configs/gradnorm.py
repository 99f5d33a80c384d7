"""GradNorm's toy problem (Chen et al., ICML 2018, Section 4), for ``experiments/gradnorm.py``.

``T`` regression tasks ``sigma_i tanh((B + eps_i) x)``, 250 inputs, 100 outputs, a 4x100 ReLU trunk and linear
heads; sigmas log-spaced over two orders of magnitude; equal weighting against uncertainty weighting and
GradNorm (alpha 0.12, the paper's, on the last trunk layer). Batch 100 of fresh samples per iteration as in
brianlan/pytorch-grad-norm (which trains 25,000 iterations at Adam 1e-4); 30,000 at 1e-3 here, 3 seeds.
``--config.FIELD=VALUE`` overrides a field (``--help`` lists them all).
"""

import ml_collections

from experiments import multitask

PRESETS = {
    "gradnorm": dict(num_seeds=3, num_iterations=30_000, batch_size=100, lr=1e-3, steps_per_call=250,
                     checkpoint_every=500, gradnorm_alpha=0.12, gradnorm_layer="trunk/Dense_3",
                     methods=("equal", "uncertainty", "gradnorm")),
}

HELP = {
    **multitask.HELP,
    "methods": "methods compared in one table (a tuple of --config.method names); () to train --config.method",
    "toy.num_tasks": "T regression tasks",
    "toy.max_sigma": "output scales sigma_i log-spaced from 1 to this",
    "toy.input_dim": "input dimension",
    "toy.output_dim": "output dimension of every task",
    "toy.b_std": "standard deviation of the shared matrix B",
    "toy.eps_std": "standard deviation of the task matrices eps_i",
    "toy.num_test": "test examples (fixed; the loss ratios are measured on them)",
    "toy.inputs": "unit_uniform: x ~ U(-1, 1)^d scaled to unit norm (brianlan) | normal: x ~ N(0, I)",
}


def get_config(preset: str = "gradnorm") -> ml_collections.ConfigDict:
  """The GradNorm toy-problem config; ``checkpoint_every`` is also the test-evaluation interval."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = multitask.base_config()
  config.preset = preset
  config.dataset = "gradnorm"
  config.architecture = "hard_sharing"
  config.trunk = "mlp"
  config.mlp_features = (100, 100, 100, 100)
  config.head_features = ()
  config.method = ""
  config.methods = ("equal",)
  config.toy = ml_collections.ConfigDict(dict(
      num_tasks=10, max_sigma=100.0, input_dim=250, output_dim=100, b_std=10.0, eps_std=3.5, num_test=2_000,
      inputs="unit_uniform"))
  config.update(PRESETS[preset])
  return config
