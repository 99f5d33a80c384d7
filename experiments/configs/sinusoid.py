"""Sinusoid regression, the MAML paper's protocol (Finn et al. 2017, Section 5.1).

K=10 support and query points, meta-batch 25, a 2x40 ReLU MLP, Adam 1e-3 for 70,000 meta-iterations, one
inner SGD step. The paper's text says inner learning rate 0.01; the official code's default is 0.001: we
use 0.01. ``--config.FIELD=VALUE`` overrides a field (``--help`` lists them all).
"""

import ml_collections

from metalax import training

PRESETS = {"default": dict()}

HELP = {
    "preset": "the preset these values started from (informational)",
    "learners": "learners trained and compared, a tuple of: maml fomaml metasgd anil reptile imaml pretrained "
                "(joint training, fine-tuned at test time) | package.module:attribute",
    "model": "mlp | package.module:attribute (called with num_outputs=1)",
    "mlp_features": "mlp: hidden layer widths",
    "loss": "per-example loss: squared_error | package.module:attribute",
    "inner_optimizer": "inner-loop optimizer: any optax optimizer name (sgd, momentum, adam, ...)",
    "inner_lr": "inner-loop learning rate (Meta-SGD: initial rates)",
    "num_steps": "inner steps during meta-training",
    "num_shots": "K support points per task",
    "num_queries": "query points per task during meta-training",
    "meta_batch_size": "tasks per meta-update",
    "tasks_per_chunk": "meta-gradient over chunks of this many tasks (less memory); 0: all at once",
    "lr": "outer (meta) Adam learning rate",
    "imaml_reg": "iMAML: proximal regularisation strength",
    "imaml_cg_steps": "iMAML: conjugate-gradient steps of the implicit meta-gradient",
    "num_test_episodes": "held-out test tasks (a key never used for training)",
    "test_num_queries": "query points per held-out task",
    "test_num_steps": "test curves over 0..test_num_steps inner steps",
    "pretrained_lr_grid": "the pretrained baseline fine-tunes with the best of these rates (validation tasks)",
}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The sinusoid config (one preset: the paper's protocol)."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = training.base_config()
  config.preset = preset
  config.learners = ("maml", "pretrained")
  config.model = "mlp"
  config.mlp_features = (40, 40)
  config.loss = "squared_error"
  config.inner_optimizer = "sgd"
  config.inner_lr = 0.01
  config.num_steps = 1
  config.num_shots = 10
  config.num_queries = 10
  config.meta_batch_size = 25
  config.tasks_per_chunk = 0
  config.lr = 1e-3
  config.imaml_reg = 1.0
  config.imaml_cg_steps = 5
  config.num_iterations = 70_000
  config.steps_per_call = 1_000
  config.checkpoint_every = 10_000
  config.num_test_episodes = 600
  config.test_num_queries = 100
  config.test_num_steps = 10
  config.pretrained_lr_grid = (0.001, 0.003, 0.01, 0.03, 0.1)
  config.update(PRESETS[preset])
  return config
