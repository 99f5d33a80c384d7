"""Neural processes on 1-D Gaussian-process regression (Garnelo et al. 2018; Kim et al. 2019).

Functions from a GP (default RBF, length scale ~ U[0.1, 0.6], signal scale ~ U[0.1, 1], noise 0.02, inputs
in [-2, 2], as DeepMind's GPCurvesReader), a fixed number of context points and extra target points per
task. ``paper`` is the papers' model and optimiser (128 units, Adam 1e-4, batch 16, 100,000 iterations);
``default`` is a CPU-sized run (64 units, Adam 5e-4, 6,000 iterations). ``--config.FIELD=VALUE``
overrides a field (``--help`` lists them all).
"""

import ml_collections

from metalax import training

PRESETS = {
    "default": dict(),
    "paper": dict(hidden_dim=128, latent_dim=128, lr=1e-4, num_iterations=100_000, checkpoint_every=10_000),
    "smoke": dict(hidden_dim=8, latent_dim=4, num_heads=2, num_iterations=4, steps_per_call=2,
                  checkpoint_every=2, num_test_episodes=4, test_num_targets=8, num_eval_samples=4,
                  plot_points=20),
}

HELP = {
    "preset": "the preset these values started from (informational)",
    "learners": "learners trained and compared, a tuple of: cnp np anp",
    "kernel": "GP kernel: rbf | matern52 | periodic",
    "lengthscale": "length scale range (low, high), drawn per task",
    "signal_scale": "signal standard deviation range (low, high), drawn per task",
    "period": "periodic kernel: period",
    "noise": "observation noise standard deviation",
    "num_context": "context (support) points per task",
    "num_targets": "extra target (query) points per task while training",
    "hidden_dim": "width of every hidden layer and of r",
    "latent_dim": "width of z (np, anp)",
    "num_heads": "anp: attention heads",
    "self_attention_layers": "anp: self-attention blocks in each encoder",
    "np_deterministic_path": "np: add the mean-aggregated deterministic path (Kim et al.'s NP baseline)",
    "meta_batch_size": "tasks per update",
    "lr": "Adam learning rate",
    "num_test_episodes": "held-out test tasks (a key never used for training)",
    "test_num_targets": "target points per held-out task (besides the context)",
    "num_eval_samples": "latent samples of the predictive at test time",
    "plot_points": "grid points of the predictive-band plot",
}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The NP regression config."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = training.base_config()
  config.preset = preset
  config.learners = ("cnp", "np", "anp")
  config.kernel = "rbf"
  config.lengthscale = (0.1, 0.6)
  config.signal_scale = (0.1, 1.0)
  config.period = 1.0
  config.noise = 0.02
  config.num_context = 10
  config.num_targets = 40
  config.hidden_dim = 64
  config.latent_dim = 64
  config.num_heads = 8
  config.self_attention_layers = 2
  config.np_deterministic_path = False
  config.meta_batch_size = 16
  config.lr = 5e-4
  config.num_iterations = 6_000
  config.steps_per_call = 200
  config.checkpoint_every = 1_000
  config.num_test_episodes = 500
  config.test_num_targets = 100
  config.num_eval_samples = 32
  config.plot_points = 200
  config.update(PRESETS[preset])
  return config
