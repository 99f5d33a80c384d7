"""Few-shot image classification: every field, and one preset per published setting.

``--config=experiments/configs/fewshot.py:NAME`` selects a preset; ``--config.FIELD=VALUE`` overrides a
field (``--help`` lists them all). Presets:

* ``maml_5w1s``, ``maml_5w5s``, ``maml_20w1s``, ``maml_20w5s``: MAML on Omniglot (Finn, Abbeel & Levine
  2017, Section 5.2 and Appendix A.1): the strided Conv-4 (64 filters, batch statistics), meta-batch 32
  (5-way) or 16 (20-way), inner SGD lr 0.4 with 1 step (5-way) or 0.1 with 5 steps (20-way), Adam 1e-3,
  60,000 meta-iterations, 10 inner steps at test time, 600 test tasks. Published: 98.7 / 99.9 / 95.8 / 98.9.
* ``protonet_5w1s``, ``protonet_5w5s``, ``protonet_20w1s``, ``protonet_20w5s``: Prototypical Networks on
  Omniglot (Snell, Swersky & Zemel 2017, Section 3.1): the max-pool Conv-4 (64-d embeddings), squared
  Euclidean distance, training episodes of 60 classes with 5 queries per class and the test shot count,
  Adam 1e-3 halved every 2,000 episodes. Published: 98.8 / 99.7 / 96.0 / 98.9.

The Omniglot presets use the Vinyals split (1200 training characters, 423 test characters, 4 rotations
each; the last 100 training characters held out for validation, as MAML's and learn2learn's 1100/100/423).
"""

import ml_collections

from metalax import training

PRESETS = {
    "default": dict(),
    "maml_5w1s": dict(learner="maml", num_ways=5, num_shots=1, meta_batch_size=32, inner_lr=0.4, num_steps=1),
    "maml_5w5s": dict(learner="maml", num_ways=5, num_shots=5, meta_batch_size=32, inner_lr=0.4, num_steps=1),
    "maml_20w1s": dict(learner="maml", num_ways=20, num_shots=1, meta_batch_size=16, inner_lr=0.1,
                       num_steps=5),
    "maml_20w5s": dict(learner="maml", num_ways=20, num_shots=5, meta_batch_size=16, inner_lr=0.1,
                       num_steps=5),
    "protonet_5w1s": dict(learner="protonet", num_ways=60, num_shots=1, test_num_ways=5),
    "protonet_5w5s": dict(learner="protonet", num_ways=60, num_shots=5, test_num_ways=5),
    "protonet_20w1s": dict(learner="protonet", num_ways=60, num_shots=1, test_num_ways=20),
    "protonet_20w5s": dict(learner="protonet", num_ways=60, num_shots=5, test_num_ways=20),
}

PROTONET_DEFAULTS = dict(conv4_variant="maxpool", num_queries=5, test_num_queries=15, meta_batch_size=1,
                         lr_schedule="step", lr_decay_every=2000, num_iterations=20_000)

HELP = {
    "preset": "the preset these values started from (informational)",
    "dataset": "omniglot | mnist | tfds:NAME | folder:PATH (a subfolder of images per class) | npz:PATH | "
               "package.module:attribute",
    "cache_dir": "Omniglot's decoded-image cache (empty: ~/.cache/metalax)",
    "split": "Omniglot class split: vinyals | snell | lake",
    "num_validation": "vinyals split: training characters held out for validation",
    "class_split": "tfds:/folder:/npz: datasets: (train, validation, test) fractions of the classes",
    "image_size": "folder: datasets: resize images to this square size (0: keep)",
    "model": "mlp | conv4 | resnet12 | package.module:attribute (called with num_outputs=None|int)",
    "conv4_variant": "conv4: strided (MAML's Omniglot net) | maxpool (ProtoNets')",
    "hidden": "conv4: filters per layer",
    "norm": "conv4/resnet12: batch (batch statistics) | layer | group | none",
    "conv_impl": "conv4 convolutions: patches (batched GEMMs) | xla (lax.conv)",
    "resnet_channels": "resnet12: channels of the four residual blocks",
    "dropblock_rate": "resnet12: DropBlock drop rate in the last two blocks (0: off)",
    "mlp_features": "mlp: hidden layer widths (embedding learners: the last is the embedding)",
    "learner": "maml fomaml metasgd anil reptile imaml pretrained protonet matching knn r2d2 blackbox | "
               "package.module:attribute",
    "loss": "per-example loss of gradient-based learners: cross_entropy | package.module:attribute",
    "init_encoder": "embedding learners: start from the encoder of an experiments.representation workdir",
    "augment": "metalax.augment operations applied to every episode's images, e.g. (\"random_flip\",)",
    "episodes": "fixed (N-way K-shot) | variable (ways and shots drawn per meta-batch, Meta-Dataset style)",
    "min_ways": "variable episodes: the fewest ways (num_ways is the most)",
    "min_shots": "variable episodes: the fewest shots (num_shots is the most)",
    "num_ways": "classes per training episode",
    "num_shots": "support examples per class",
    "num_queries": "query examples per class",
    "test_num_ways": "validation/test episodes' ways (0: num_ways)",
    "test_num_shots": "validation/test episodes' shots (0: num_shots)",
    "test_num_queries": "validation/test episodes' queries per class (0: num_queries)",
    "meta_batch_size": "episodes per meta-update",
    "tasks_per_chunk": "meta-gradient over chunks of this many episodes (less memory); 0: all at once",
    "inner_lr": "inner-loop learning rate (Meta-SGD: initial rates)",
    "inner_optimizer": "inner-loop optimizer: any optax optimizer name (sgd, momentum, adam, ...)",
    "num_steps": "inner steps during meta-training",
    "test_num_steps": "inner steps at validation and test time",
    "imaml_reg": "iMAML: proximal regularisation strength",
    "imaml_cg_steps": "iMAML: conjugate-gradient steps of the implicit meta-gradient",
    "lr": "outer (meta) Adam learning rate",
    "lr_schedule": "constant | step (halve every lr_decay_every iterations) | cosine",
    "lr_decay_every": "step schedule: iterations between halvings",
    "num_valid_episodes": "validation episodes at each checkpoint (the best checkpoint is tested)",
    "num_test_episodes": "test episodes of the best checkpoint",
    "eval_batch_size": "episodes evaluated at once",
}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The few-shot config of ``preset`` (``default``: MAML 5-way 1-shot on Omniglot, the base fields)."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
  config = training.base_config()
  config.preset = preset
  # Data.
  config.dataset = "omniglot"
  config.cache_dir = ""
  config.split = "vinyals"
  config.num_validation = 100
  config.class_split = (0.64, 0.16, 0.2)
  config.image_size = 0
  # Model.
  config.model = "conv4"
  config.conv4_variant = "strided"
  config.hidden = 64
  config.norm = "batch"
  config.conv_impl = "patches"
  config.resnet_channels = (64, 160, 320, 640)
  config.dropblock_rate = 0.0
  config.mlp_features = (256, 128, 64)
  # Learner.
  config.learner = "maml"
  config.loss = "cross_entropy"
  config.init_encoder = ""
  config.augment = ()
  # Episodes.
  config.episodes = "fixed"
  config.min_ways = 5
  config.min_shots = 1
  config.num_ways = 5
  config.num_shots = 1
  config.num_queries = 15
  config.test_num_ways = 0
  config.test_num_shots = 0
  config.test_num_queries = 0
  config.meta_batch_size = 32
  config.tasks_per_chunk = 0
  # Inner loop.
  config.inner_lr = 0.4
  config.inner_optimizer = "sgd"
  config.num_steps = 1
  config.test_num_steps = 10
  config.imaml_reg = 2.0
  config.imaml_cg_steps = 5
  # Outer loop.
  config.lr = 1e-3
  config.lr_schedule = "constant"
  config.lr_decay_every = 2000
  config.num_iterations = 60_000
  config.steps_per_call = 100
  config.checkpoint_every = 1000
  # Validation and test.
  config.num_valid_episodes = 200
  config.num_test_episodes = 600
  config.eval_batch_size = 50
  config.update(PROTONET_DEFAULTS if preset.startswith("protonet") else {})
  config.update(PRESETS[preset])
  return config
