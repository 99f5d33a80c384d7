"""MultiMNIST (Sener & Koltun, NeurIPS 2018), for ``experiments/multimnist.py``.

Two overlapping MNIST digits, left and right classification. The preset: a 784-256-128 ReLU trunk (``trunk=mlp``;
``trunk=lenet`` is the paper's MultiLeNet encoder, ~100x slower per step on a CPU) and a 128-50-10 head per
task; Adam 1e-3, batch 128, 2,000 iterations, 5 seeds; the single-task models and every weighting and
aggregation method with the papers' / LibMTL's defaults. ``--config.FIELD=VALUE`` overrides a field
(``--help`` lists them all); the MNIST files come from ``--config.data_dir`` (else ``$METALAX_DATA_DIR/mnist``,
downloaded when missing unless ``--config.download=false``).
"""

import ml_collections

from experiments import multitask

PRESETS = {
    "multimnist": dict(num_seeds=5, num_iterations=2000, batch_size=128, lr=1e-3, steps_per_call=500,
                       checkpoint_every=2000, dwa_steps_per_epoch=469, gradnorm_layer="trunk/Dense_1",
                       methods=("single_0", "single_1", "equal", "uncertainty", "dwa", "rlw", "gradnorm", "pcgrad",
                                "mgda", "mgda_ub", "cagrad", "graddrop", "imtl_g", "nash_mtl", "aligned_mtl",
                                "upgrad")),
}

HELP = {
    **multitask.HELP,
    "methods": "methods compared in one table (a tuple of --config.method names; single_<t>: the single-task "
               "baselines of Delta_m%); () to train --config.method",
    "multimnist.num_train": "training images (from MNIST-train)",
    "multimnist.num_test": "test images (from MNIST-test)",
    "multimnist.data_seed": "seed of the digit pairs (the test set uses data_seed + 1)",
    "multimnist.eval_batch_size": "test images per evaluation batch",
}


def get_config(preset: str = "multimnist") -> ml_collections.ConfigDict:
  """The MultiMNIST config; ``checkpoint_every`` is also when the test accuracy would be logged (at the end)."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = multitask.base_config()
  config.preset = preset
  config.dataset = "multimnist"
  config.architecture = "hard_sharing"
  config.trunk = "mlp"
  config.mlp_features = (256, 128)
  config.head_features = (50,)
  config.num_iterations = 1500
  config.checkpoint_every = 1500
  config.method = ""
  config.methods = ("equal",)
  config.multimnist = ml_collections.ConfigDict(dict(num_train=60_000, num_test=10_000, data_seed=0,
                                                     eval_batch_size=2_000))
  config.update(PRESETS[preset])
  return config
